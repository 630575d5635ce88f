/* Original destination, two views of the same record.
 *
 * sockops: when a captured socket's handshake completes (ACTIVE_ESTABLISHED runs before
 * the final ACK leaves, so before the proxy can accept), copy its am_orig_cookie
 * record under the key the proxy can compute from the socket it accepted: (netns
 * cookie, client address, client port) -> am_orig_tuple. The cookie record is dropped
 * when the socket closes; the tuple record stays until the proxy reads it (it takes
 * it with lookup-and-delete: one record, one connection) or LRU evicts it, because
 * the proxy may accept a connection after the client already closed it. Nothing on
 * the kernel side reads am_orig_tuple: getpeername answers from am_orig_cookie.
 *
 * getpeername4/6: the app sees the address it connected to, not the proxy's. */

int am_sockops(struct bpf_sock_ops *skops)
{
    /* sockops runs for many TCP events of every socket below the cgroup: leave the
     * ones we do not need before doing any work. */
    __u32 op = skops->op;
    if (op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_STATE_CB)
        return 1;
    __u64 cookie = am_socket_cookie(skops);
    if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
        struct am_orig_dst *orig = am_orig_cookie.lookup(&cookie);
        if (!orig)
            return 1;
        struct am_orig_dst copy = *orig;
        /* Every ctx field is read unconditionally: per-branch reads get merged by clang
         * into a computed ctx pointer, which the verifier rejects. */
        __u32 family = skops->family, ip4 = skops->local_ip4;
        __u32 ip6_0 = skops->local_ip6[0], ip6_1 = skops->local_ip6[1];
        __u32 ip6_2 = skops->local_ip6[2], ip6_3 = skops->local_ip6[3];
        struct am_tuple_key key = {};
        key.netns_cookie = am_netns_cookie(skops);
        if (family == AM_AF_INET) {
            key.addr[2] = bpf_htonl(0xffff);
            key.addr[3] = ip4;
        } else {
            key.addr[0] = ip6_0;
            key.addr[1] = ip6_1;
            key.addr[2] = ip6_2;
            key.addr[3] = ip6_3;
        }
        key.port = (__u16)skops->local_port;
        am_orig_tuple.update(&key, &copy);
        bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
    } else if (skops->args[1] == BPF_TCP_CLOSE) {
        am_orig_cookie.delete(&cookie);
    }
    return 1;
}

int am_getpeername4(struct bpf_sock_addr *ctx)
{
    __u64 cookie = am_socket_cookie(ctx);
    struct am_orig_dst *orig = am_orig_cookie.lookup(&cookie);
    if (!orig)
        return 1;
    ctx->user_ip4 = orig->addr[3];
    ctx->user_port = bpf_htons(orig->port);
    return 1;
}

int am_getpeername6(struct bpf_sock_addr *ctx)
{
    __u64 cookie = am_socket_cookie(ctx);
    struct am_orig_dst *orig = am_orig_cookie.lookup(&cookie);
    if (!orig)
        return 1;
    ctx->user_ip6[0] = orig->addr[0];
    ctx->user_ip6[1] = orig->addr[1];
    ctx->user_ip6[2] = orig->addr[2];
    ctx->user_ip6[3] = orig->addr[3];
    ctx->user_port = bpf_htons(orig->port);
    return 1;
}
