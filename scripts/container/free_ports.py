"""Print N distinct free TCP ports on 127.0.0.1, space-separated (the kernel picks them: bind to port 0).
All N sockets are open at once, so the ports differ; they are closed before printing, so another
process could take one in between (unlikely in the seconds before compose starts)."""

import socket
import sys

count = int(sys.argv[1])
sockets = []
for _ in range(count):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    sockets.append(s)
print(" ".join(str(s.getsockname()[1]) for s in sockets))
for s in sockets:
    s.close()
