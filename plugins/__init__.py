"""memeval's built-in method plugins, installed as `memeval_plugins` and registered through the
`memeval` entry-point group exactly as a third-party plugin would be."""
