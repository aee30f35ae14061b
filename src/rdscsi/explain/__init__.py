"""`rdscsi explain`: from "my volume is stuck" to the reason, in one command.

The driver serves `GET /debug/explain` on its metrics address (`service.Explainer`, read
only, no secrets): for a volume (by PVC, PV or id), a node or an appliance, the machine's
current state, the transition each relevant event would take from what the driver observes
now, the guards that block the next step and the evidence or time that would unblock them
(`machines.guards`), the flight recorder's last transitions (`hooks.recorder`), and what the
cluster and the appliance show. `client` is the command that asks for it and `render` prints
it (text, Mermaid, or the JSON as served).

Modules: `service` (the endpoint: names, who answers, the overview, the wiring), `volume`,
`node` and `appliance` (one explanation each; `appliance` also holds the `ApplianceView`
interface), `steps` (a next step and its one-line summary), `machine` (what is the same for
every machine: diagram, outcomes, guards, history), `client` and `render` (the command).
"""
