"""chatdock inside voice-agent frameworks: Pipecat (pipecat.py) and LiveKit Agents (livekit.py)."""
