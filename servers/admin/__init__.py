"""`mesh.admin.v1.AdminService`: what a process runs and how healthy each part is."""
