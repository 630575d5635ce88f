/* Same-node splice: bytes received on one proxy socket go straight to the other
 * socket's egress (bpf_sk_redirect_hash), never to user space.
 *
 * The node proxy puts both sockets of an admitted same-node connection (the accepted
 * client socket and the socket it dialled to the app) into am_splice_socks, keyed by
 * socket cookie, and one am_splice_ctl per socket (the peer's cookie, the bytes the
 * proxy has forwarded itself, paused); this program keeps one am_splice_count per
 * socket (bytes redirected, bytes passed). Each map has a single writer, so no update
 * is lost. The program runs for every skb either socket receives
 * (BPF_SK_SKB_VERDICT on the sockhash).
 *
 * Redirect only while (a) the proxy has not paused the side and (b) every byte this
 * program ever passed to user space has been forwarded by the proxy (passed == taken):
 * the proxy writes those bytes to the peer socket itself, so a later skb redirected
 * into the peer's queue cannot overtake them. Otherwise SK_PASS: the skb is queued on
 * the receiving socket, charged to its receive buffer (TCP closes the window), and
 * the proxy reads it. The proxy pauses a side when the peer has not sent what was
 * redirected to it (the kernel queues redirected skbs without limit: a reader that
 * stops reading would otherwise pin unbounded memory). A socket not in the map (the
 * peer already removed) passes too: nothing is dropped after TCP acknowledged it. */

int am_splice_verdict(struct __sk_buff *skb)
{
    __u64 cookie = am_socket_cookie(skb);
    struct am_splice_ctl *ctl = am_splice_ctl.lookup(&cookie);
    struct am_splice_count *count = am_splice_count.lookup(&cookie);
    if (!ctl || !count)
        return SK_PASS;
    __u32 len = skb->len;
    /* The FIN arrives as a skb of its own, often empty. Passed or redirected, the
     * psock's work item would "send" 0 bytes, which it takes for a broken pipe and
     * reports as EPIPE on the socket. TCP has already recorded the FIN itself. */
    if (len == 0)
        return SK_DROP;
    if (!ctl->paused && count->passed == ctl->taken) {
        __u64 peer = ctl->peer;
        if (bpf_sk_redirect_hash(skb, (void *)bpf_pseudo_fd(1, -1), &peer, 0) == SK_PASS) {
            __sync_fetch_and_add(&count->redirected, len);
            return SK_PASS;
        }
    }
    __sync_fetch_and_add(&count->passed, len);
    return SK_PASS;
}
