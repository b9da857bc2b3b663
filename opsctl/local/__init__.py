"""The embedded platform: real servers from pip wheels, supervised by recorded PIDs."""
