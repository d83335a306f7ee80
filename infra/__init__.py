"""The ground floor: HTTP worker, middleware, request metadata, logging, metrics and the database layer.

Nothing here imports an app of the project.
"""
