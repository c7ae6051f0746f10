"""The events database, shared by the monitor (which writes it) and the service (which reads it
and marks cases): sightings and their snapshots (``events``), the media watch's cases
(``cases``), and the alert outbox (``outbox``). The store imports neither the monitor nor the
service."""
