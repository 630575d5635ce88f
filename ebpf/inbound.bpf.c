/* Inbound capture: sk_lookup, linked to each enrolled pod's netns, steers every new
 * TCP connection to the pod — whatever local address it targets: the pod IPs, its
 * IPv6 link-local address, any address added later — to the proxy's listener for
 * that pod (am_listeners), except port AM_HBONE_PORT and the pod's excluded ports.
 * The accepted socket's getsockname() is the original destination.
 *
 * sk_lookup sees no cgroup and may not call bpf_get_netns_cookie (the verifier
 * refuses the helper for this program type), so nothing in its context names the
 * netns it runs in. Each pod gets its own instance of this program instead: the
 * loader (ebpf/inbound.py) writes the pod's cgroup id over AM_POD_PLACEHOLDER.
 *
 * Left alone: what enters through loopback (the pod talking to itself), and a
 * connection whose source is its destination: the kernel picks the destination as
 * source for a connection to one of the netns's own addresses, which is how the proxy
 * delivers to the app from inside the pod (such traffic is routed through lo but
 * reports the address's device, eth0, as ingress). A packet from outside with a local
 * source is a martian (v4) or can never complete a handshake (its SYN-ACK stays in
 * the pod).
 *
 * Fail closed: in a netns this program is linked to, a connection it cannot hand to
 * the proxy (no pod record, no listener, assignment refused) is dropped, never passed
 * to the app, and counted in am_inbound_drop. */

static __always_inline int am_drop_inbound(__u32 reason)
{
    __u64 *count = am_inbound_drop.lookup(&reason);
    if (count)
        __sync_fetch_and_add(count, 1);
    return SK_DROP;
}

int am_sk_lookup(struct bpf_sk_lookup *ctx)
{
    if (ctx->protocol != AM_IPPROTO_TCP || ctx->ingress_ifindex == AM_LOOPBACK_IFINDEX)
        return SK_PASS;
    __u16 port = (__u16)ctx->local_port;
    if (port == AM_HBONE_PORT)
        return SK_PASS;

    /* ctx fields read unconditionally: see original_dst.bpf.c. */
    __u32 family = ctx->family, ip4 = ctx->local_ip4, rip4 = ctx->remote_ip4;
    __u32 ip6_0 = ctx->local_ip6[0], ip6_1 = ctx->local_ip6[1];
    __u32 ip6_2 = ctx->local_ip6[2], ip6_3 = ctx->local_ip6[3];
    __u32 rip6_0 = ctx->remote_ip6[0], rip6_1 = ctx->remote_ip6[1];
    __u32 rip6_2 = ctx->remote_ip6[2], rip6_3 = ctx->remote_ip6[3];
    if (family == AM_AF_INET ? ip4 == rip4
                             : (ip6_0 == rip6_0 && ip6_1 == rip6_1 && ip6_2 == rip6_2 &&
                                ip6_3 == rip6_3))
        return SK_PASS;

    __u64 id = AM_POD_PLACEHOLDER;
    struct am_pod_config *pod = am_pods.lookup(&id);
    if (!pod)
        return am_drop_inbound(AM_DROP_NO_POD);
    if (!(pod->flags & AM_FLAG_CAPTURE_INBOUND))
        return SK_PASS;
    if (am_port_listed(pod->inbound_excluded, port))
        return SK_PASS;

    struct am_listener_key key = {};
    key.netns_cookie = pod->netns_cookie;
    key.family = family;
    struct bpf_sock *sk = (struct bpf_sock *)am_listeners.lookup(&key);
    if (!sk)
        return am_drop_inbound(AM_DROP_NO_LISTENER);
    long err = bpf_sk_assign(ctx, sk, 0);
    bpf_sk_release(sk);
    return err ? am_drop_inbound(AM_DROP_ASSIGN_FAILED) : SK_PASS;
}
