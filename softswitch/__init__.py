"""softswitch: a SIP call-centre server in one Python process, built on PJSIP."""

__version__ = "0.1.0"
