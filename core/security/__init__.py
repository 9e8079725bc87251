"""Who is calling and what they may do: the principal of the current call, the access rule
each RPC declares in its contract (`mesh.access.v1.access`), and the checks of tokens and
client certificates that establish the principal at the boundary."""
