"""Test and benchmark support: free ports, RTP pcaps, loopback capture, audio checks, SIPp."""
