"""Ray Serve deployments: the gateway and the app builder (Ray actors, the Kafka inbound worker
among them, live in ``actors/``)."""
