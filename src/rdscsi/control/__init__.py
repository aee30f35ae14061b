"""Controller-side control loops: the Node book fed by a node source (the Kubernetes informer
or, standalone, the local node), and the reconcile pass over the attachments."""
