"""The dashboard's views, one module per page family; all writes go through core.actions."""
