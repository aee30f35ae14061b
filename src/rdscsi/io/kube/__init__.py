"""Kubernetes I/O: API client set-up (`client`), one informer for any resource (`informer`)
over Nodes (`nodes`), this driver's VolumeAttachments and PVs (`attachments`), the Event sink
(`events`), leader election (`lease`) and the RBAC the calls need (`rbac`). Every period runs
on the injected `Clock`.

Nothing is imported here: the node plugin pulls in pacing helpers without the client."""
