"""The centre's side of site agents, in the daemon: who may post (registry), the HTTP routes (api) and the
sequence journal.
"""
