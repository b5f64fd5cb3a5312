"""What the serving image ships whole: the model core (`serving/core/`) and the service around it (the API's door,
admission, A/B testing, telemetry, explanations, the web UI, settings)."""
