/* softswitch's pjproject configuration: a server, not a desktop phone.
 * Limits are sized for hundreds of concurrent calls on one endpoint (see shared/spec/pjsip.md);
 * the pjsua2 wheel on PyPI stops at 4 calls and 64 sockets. */
#ifndef SOFTSWITCH_CONFIG_SITE_H
#define SOFTSWITCH_CONFIG_SITE_H

/* No video, no sound device: every leg is network audio through the conference bridge. */
#define PJMEDIA_HAS_VIDEO                   0
#define PJMEDIA_AUDIO_DEV_HAS_PORTAUDIO     0
#define PJMEDIA_AUDIO_DEV_HAS_ALSA          0
#define PJMEDIA_AUDIO_DEV_HAS_NULL_AUDIO    0

/* Calls, players, recorders and bridge slots. */
#define PJSUA_MAX_CALLS                     1024
#define PJSUA_MAX_PLAYERS                   1024
#define PJSUA_MAX_RECORDERS                 1024
#define PJSUA_MAX_CONF_PORTS                4608
/* Accounts: From comes from the account, so every caller ID in a live outbound call (an agent
 * leg showing the customer's number) holds one; 64 allowed only 32 conversations at once. */
#define PJSUA_MAX_ACC                       1024

/* Sockets: SIP transports plus two per RTP stream; epoll is selected by configure. */
#define PJ_IOQUEUE_MAX_HANDLES              4096
#define PJ_IOQUEUE_MAX_EVENTS_IN_SINGLE_POLL 64

/* Transaction and dialog hash tables. */
#define PJSIP_MAX_TSX_COUNT                 (64*1024-1)
#define PJSIP_MAX_DIALOG_COUNT              (64*1024-1)

/* Bigger UDP socket buffers so bursts of REGISTER/INVITE are not dropped by the kernel. */
#define PJSIP_UDP_SO_RCVBUF_SIZE            (1024*1024)
#define PJSIP_UDP_SO_SNDBUF_SIZE            (1024*1024)

/* Messages with many headers (SIPp scenarios, custom headers) must not be truncated. */
#define PJSIP_MAX_PKT_LEN                   8000

#endif
