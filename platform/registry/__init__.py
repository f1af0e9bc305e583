"""Image pulls: OCI distribution-style read endpoints (`/v2/...`) over the controller's image store.

Agents fetch the images they lack by digest from here (with their host token); any OCI tool can
pull too, with a user API token of someone who may read the app.
"""
