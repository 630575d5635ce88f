/* Inbound capture: sk_lookup, linked to each enrolled pod's netns, steers a new TCP
 * connection to one of the pod's IPs (any port but AM_HBONE_PORT and the pod's
 * excluded ports) to the proxy's listener for that pod (am_listeners). The accepted
 * socket's getsockname() is the original destination.
 *
 * sk_lookup sees no cgroup and no netns cookie, so the pod is found by the destination
 * IP (am_inbound_ips). Traffic that entered through loopback (the pod talking to
 * itself, or the proxy connecting to the app from inside the pod) is left alone.
 * With no listener registered the connection is refused: capture fails closed. */

int am_sk_lookup(struct bpf_sk_lookup *ctx)
{
    if (ctx->protocol != AM_IPPROTO_TCP || ctx->ingress_ifindex == AM_LOOPBACK_IFINDEX)
        return SK_PASS;
    __u16 port = (__u16)ctx->local_port;
    if (port == AM_HBONE_PORT)
        return SK_PASS;

    /* ctx fields read unconditionally: see original_dst.bpf.c. */
    __u32 family = ctx->family, ip4 = ctx->local_ip4;
    __u32 ip6_0 = ctx->local_ip6[0], ip6_1 = ctx->local_ip6[1];
    __u32 ip6_2 = ctx->local_ip6[2], ip6_3 = ctx->local_ip6[3];
    struct am_addr_key addr = {};
    if (family == AM_AF_INET) {
        addr.addr[2] = bpf_htonl(0xffff);
        addr.addr[3] = ip4;
    } else {
        addr.addr[0] = ip6_0;
        addr.addr[1] = ip6_1;
        addr.addr[2] = ip6_2;
        addr.addr[3] = ip6_3;
    }
    __u64 *cgroup_id = am_inbound_ips.lookup(&addr);
    if (!cgroup_id)
        return SK_PASS;
    __u64 id = *cgroup_id;
    struct am_pod_config *pod = am_pods.lookup(&id);
    if (!pod || !(pod->flags & AM_FLAG_CAPTURE_INBOUND))
        return SK_PASS;
    if (am_port_listed(pod->inbound_excluded, port))
        return SK_PASS;

    struct am_listener_key key = {};
    key.netns_cookie = pod->netns_cookie;
    key.family = family;
    struct bpf_sock *sk = (struct bpf_sock *)am_listeners.lookup(&key);
    if (!sk)
        return SK_DROP;
    long err = bpf_sk_assign(ctx, sk, 0);
    bpf_sk_release(sk);
    return err ? SK_DROP : SK_PASS;
}
