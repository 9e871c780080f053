"""Site agents: the wire protocol (protocol), the agent that runs at the school (site/) and the centre's side of
it in the daemon (centre/).
"""
