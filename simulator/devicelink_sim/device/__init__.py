"""The virtual device: the real daemon on a board you can see and touch (``devicelink-sim device``).

- pinhost.py: the daemon's process, ``devicelink run`` on gpiozero's MockFactory, its pins wired
  to the simulator over a Unix socket;
- board.py: :class:`VirtualDevice`, which starts it and follows its screen (frames.py), pins and
  status, publishing each on a hub (hub.py);
- web.py, page.html, page.js: the page, pushed to over server-sent events;
- run.py: :class:`Simulation` (the development server, the device and the page) and the command.

docs/simulator.md says how the pieces fit.
"""
