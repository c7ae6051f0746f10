"""Monitoring: sightings and the events store they are kept in."""
