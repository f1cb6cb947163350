"""Deployment: Dockerfile, compose and Kubernetes files, Redis, nginx replicas, faults, packaging."""
