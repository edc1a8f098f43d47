"""segue.osc_bridge: OSC adapter onto the daemon command vocabulary (arrives with the OSC/MIDI issue)."""
