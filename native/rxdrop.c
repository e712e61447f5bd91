/* The transport manager's dropped-data callback, shared.
 *
 * pjsip calls one function for every byte range it does not turn into a message: leading CRLF
 * keep-alives (PJ_EIGNORED), syntax errors (PJSIP_EINVALIDMSG), a TCP message over
 * PJSIP_MAX_PKT_LEN (PJSIP_ERXOVERFLOW), missing mandatory headers (PJSIP_EMISSINGHDR). The
 * transport manager keeps only one such callback, and several parts of softswitch's edge need
 * it, so this file owns it and hands each drop to every registered handler in order. Handlers
 * run on the thread that polls pjsip (the UA thread). */
#include "softswitch_native.h"

#define SS_RXDROP_MAX 4

static ss_rxdrop_handler g_handlers[SS_RXDROP_MAX];
static int g_nhandlers;
static int g_installed;

static void on_rx_dropped(pjsip_tp_dropped_data *dd) {
    for (int i = 0; i < g_nhandlers; i++) g_handlers[i](dd);
}

int ss_rxdrop_add(ss_rxdrop_handler handler) {
    for (int i = 0; i < g_nhandlers; i++)
        if (g_handlers[i] == handler) return 0;
    if (g_nhandlers == SS_RXDROP_MAX) return -1;
    if (!g_installed) {
        pj_status_t st = pjsip_tpmgr_set_drop_data_cb(pjsip_endpt_get_tpmgr(pjsua_get_pjsip_endpt()), &on_rx_dropped);
        if (st != PJ_SUCCESS) return -1;
        g_installed = 1;
    }
    g_handlers[g_nhandlers++] = handler;
    return 0;
}

void ss_rxdrop_remove(ss_rxdrop_handler handler) {
    for (int i = 0; i < g_nhandlers; i++) {
        if (g_handlers[i] != handler) continue;
        for (int j = i + 1; j < g_nhandlers; j++) g_handlers[j - 1] = g_handlers[j];
        g_nhandlers--;
        return;
    }
}
