"""Ray Serve deployments: the gateway and the Kafka inbound worker."""
