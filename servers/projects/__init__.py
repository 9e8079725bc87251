"""`mesh.projects.v1.ProjectService`: projects on the CRUD engine of `core.resources.crud`."""
