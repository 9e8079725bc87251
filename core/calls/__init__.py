"""What a caller of another service needs and nothing of the server: channels and their
settings, the call's deadline, the circuit breaker, and domain errors on the wire
(`google.rpc.Status`)."""
