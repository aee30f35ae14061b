"""list_attachments against FakeKube: the VA -> PV join, filters, and request count."""

from __future__ import annotations

from kubernetes.aio.client import ApiClient

from rdscsi.io.kube.attachments import AttachmentView, list_attachments
from rdscsi.testing.kubeapi import FakeKube
from rdscsi.testing.kubeapi.objects import pv, volume_attachment

DRIVER = "rds.csi.mikrotik.com"


async def test_join_and_filters(kube: FakeKube, api: ApiClient) -> None:
    kube.put(pv("pv-1", DRIVER, "vol-1", claim=("apps", "a")))
    kube.put(
        pv(
            "pv-2",
            DRIVER,
            "vol-2",
            claim=("apps", "b"),
            access_modes=("ReadWriteMany",),
            volume_mode="Block",
        )
    )
    kube.put(pv("pv-fs-rwx", DRIVER, "vol-3", access_modes=("ReadWriteMany",)))
    kube.put(pv("pv-ebs", "ebs.csi.aws.com", "vol-ebs"))
    kube.put(volume_attachment("csi-1", DRIVER, "n1", "pv-1"))
    kube.put(volume_attachment("csi-2a", DRIVER, "n1", "pv-2"))
    kube.put(volume_attachment("csi-2b", DRIVER, "n2", "pv-2"))
    kube.put(volume_attachment("csi-3", DRIVER, "n3", "pv-fs-rwx"))
    kube.put(volume_attachment("csi-detached", DRIVER, "n4", "pv-1", attached=False))
    kube.put(volume_attachment("csi-ebs", "ebs.csi.aws.com", "n1", "pv-ebs"))
    kube.put(volume_attachment("csi-orphan", DRIVER, "n5", "pv-deleted"))
    inline = volume_attachment("csi-inline", DRIVER, "n6", "unused")
    inline["spec"]["source"] = {
        "inlineVolumeSpec": {"csi": {"driver": DRIVER, "volumeHandle": "x"}}
    }
    kube.put(inline)

    views = sorted(await list_attachments(api, DRIVER), key=lambda v: v.attachment_name)
    assert views == [
        AttachmentView("vol-1", "n1", False, "pv-1", "csi-1"),
        AttachmentView("vol-2", "n1", True, "pv-2", "csi-2a"),
        AttachmentView("vol-2", "n2", True, "pv-2", "csi-2b"),
        AttachmentView("vol-3", "n3", False, "pv-fs-rwx", "csi-3"),
    ]


async def test_other_drivers_attachments_are_ignored(kube: FakeKube, api: ApiClient) -> None:
    kube.put(pv("pv-ebs", "ebs.csi.aws.com", "vol-ebs"))
    kube.put(volume_attachment("csi-ebs", "ebs.csi.aws.com", "n1", "pv-ebs"))
    assert await list_attachments(api, DRIVER) == []
    # the two lists run at once (the server serialises one while we parse the other)
    assert sorted(path for _, path, _ in kube.requests) == [
        "/api/v1/persistentvolumes",
        "/apis/storage.k8s.io/v1/volumeattachments",
    ]


async def test_many_attachments_take_a_few_paged_lists(kube: FakeKube, api: ApiClient) -> None:
    n = 2_000
    for i in range(n):
        kube.put(pv(f"pv-{i:05}", DRIVER, f"vol-{i}"))
        kube.put(volume_attachment(f"csi-{i:05}", DRIVER, f"n{i % 7}", f"pv-{i:05}"))
    views = await list_attachments(api, DRIVER, page_size=500)
    assert len(views) == n
    assert {v.volume_id for v in views} == {f"vol-{i}" for i in range(n)}
    # 4 pages of VolumeAttachments and 4 of PVs; no per-attachment GET.
    accesses = kube.accesses()
    assert len(accesses) == 8
    assert {(a.verb, a.resource) for a in accesses} == {
        ("list", "volumeattachments"),
        ("list", "persistentvolumes"),
    }
