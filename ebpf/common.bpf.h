/* Helpers shared by every program. Structs, maps and constants come from the header
 * ebpf/layout.py renders in front of this file; nothing here is a bare number. */

/* bcc declares bpf_get_socket_cookie as returning u32; the cookie is 64-bit. */
static __u64 (*am_socket_cookie)(void *ctx) = (void *)BPF_FUNC_get_socket_cookie;
static __u64 (*am_netns_cookie)(void *ctx) = (void *)BPF_FUNC_get_netns_cookie;

/* Exclusion lists are zero-terminated fixed arrays inside the pod's config. */
static __always_inline int am_port_listed(const __u16 *ports, __u16 port)
{
#pragma unroll
    for (int i = 0; i < AM_MAX_EXCLUDED_PORTS; i++) {
        if (ports[i] == 0)
            return 0;
        if (ports[i] == port)
            return 1;
    }
    return 0;
}

static __always_inline int am_v4_is_local(__u32 ip_net)
{
    __u32 ip = bpf_ntohl(ip_net);
    return (ip >> 24) == 127 || ip == 0;
}
