"""The one seam to MLflow: the tracking server (which one, is it up, how to log in), the store a run talks to
(an explicit client; MLflow's process-wide URIs are never set), a sweep's runs, the adapter as an MLflow
model, and the Model Registry. Only the driver side talks to MLflow; workers never do."""
