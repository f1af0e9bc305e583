"""Git smart HTTP at `/git/<app>.git`: push to build and release, clone and fetch.

Served by dulwich inside the web process. A push's objects are received, the pushed commit is
built (its output streams back to the git client on the progress side-band), and only a good
build moves the branch and becomes a release. See docs/architecture.md, "Git receiver".
"""
