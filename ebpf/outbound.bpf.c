/* Outbound capture: connect() of an enrolled pod's TCP socket is rewritten to the
 * node proxy's listener on loopback:AM_OUTBOUND_PORT inside the pod's own netns, and
 * the original destination is remembered by socket cookie (am_orig_cookie).
 *
 * Attached at a cgroup (the node's in local mode, the v2 root in Kubernetes), so it
 * runs for every socket below it; enrolled pods are picked by the *current task's*
 * cgroup or its nearest enrolled ancestor (am_task_pod: every container of a pod is
 * captured when the pod-level cgroup is enrolled). The proxy is never captured: it lives in a cgroup that is never enrolled
 * and marks its sockets with AM_PROXY_MARK (checked as well, belt and braces). */

static __always_inline struct am_pod_config *am_capturing_pod(struct bpf_sock_addr *ctx)
{
    if (ctx->protocol != AM_IPPROTO_TCP)
        return 0;
    struct bpf_sock *sk = ctx->sk;
    if (sk && sk->mark == AM_PROXY_MARK)
        return 0;
    struct am_pod_config *pod = am_task_pod();
    if (!pod || !(pod->flags & AM_FLAG_CAPTURE_OUTBOUND))
        return 0;
    return pod;
}

int am_connect4(struct bpf_sock_addr *ctx)
{
    struct am_pod_config *pod = am_capturing_pod(ctx);
    if (!pod)
        return 1;
    __u32 ip = ctx->user_ip4;
    __u16 port = bpf_ntohs((__u16)ctx->user_port);
    if (am_v4_is_local(ip) || port == AM_HBONE_PORT || am_port_listed(pod->outbound_excluded, port))
        return 1;

    struct am_orig_dst orig = {};
    orig.addr[2] = bpf_htonl(0xffff);
    orig.addr[3] = ip;
    orig.port = port;
    orig.family = AM_AF_INET;
    __u64 cookie = am_socket_cookie(ctx);
    am_orig_cookie.update(&cookie, &orig);

    ctx->user_ip4 = bpf_htonl(0x7f000001);
    ctx->user_port = bpf_htons(AM_OUTBOUND_PORT);
    return 1;
}

int am_connect6(struct bpf_sock_addr *ctx)
{
    struct am_pod_config *pod = am_capturing_pod(ctx);
    if (!pod)
        return 1;
    __u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1];
    __u32 a2 = ctx->user_ip6[2], a3 = ctx->user_ip6[3];
    __u16 port = bpf_ntohs((__u16)ctx->user_port);
    if (port == AM_HBONE_PORT || am_port_listed(pod->outbound_excluded, port))
        return 1;
    /* A dual-stack socket connecting to ::ffff:a.b.c.d arrives here, not in connect4. */
    int mapped = a0 == 0 && a1 == 0 && a2 == bpf_htonl(0xffff);
    if (mapped && am_v4_is_local(a3))
        return 1;
    if (!mapped && a0 == 0 && a1 == 0 && a2 == 0 && (a3 == 0 || a3 == bpf_htonl(1)))
        return 1;

    struct am_orig_dst orig = {};
    orig.addr[0] = a0;
    orig.addr[1] = a1;
    orig.addr[2] = a2;
    orig.addr[3] = a3;
    orig.port = port;
    orig.family = mapped ? AM_AF_INET : AM_AF_INET6;
    __u64 cookie = am_socket_cookie(ctx);
    am_orig_cookie.update(&cookie, &orig);

    ctx->user_ip6[0] = 0;
    ctx->user_ip6[1] = 0;
    if (mapped) {
        ctx->user_ip6[2] = bpf_htonl(0xffff);
        ctx->user_ip6[3] = bpf_htonl(0x7f000001);
    } else {
        ctx->user_ip6[2] = 0;
        ctx->user_ip6[3] = bpf_htonl(1);
    }
    ctx->user_port = bpf_htons(AM_OUTBOUND_PORT);
    return 1;
}
