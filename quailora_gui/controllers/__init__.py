"""Qt-free state and logic of the GUI: plain Python that the Qt views only display.

Nothing in this package imports Qt (a test checks it), and the core is imported lazily
inside the functions that need it, so importing a controller is instant.
"""
