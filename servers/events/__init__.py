"""The events service: publish, subscribe, consumer groups, dead letters and event status."""
