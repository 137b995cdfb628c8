"""Where data enters the graph: sources, pacing, radar drivers and the producer loop.

`sources` opens devices, video files, image folders, recordings and simulated drives; `pacing`
releases replayed messages at their own timing, stamped on this host's clock; `radar` holds the
`RadarDriver` interface a real radar plugs into; `producer` is the loop the camera and radar
nodes share. It sits above `fusion.logs` and `fusion.sim` because a recording and a simulated
drive are sources too.
"""
