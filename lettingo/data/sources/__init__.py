"""One module per dataset family; each returns the common interaction schema."""
