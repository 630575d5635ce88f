/* Helpers shared by every program. Structs, maps and constants come from the header
 * ebpf/layout.py renders in front of this file; nothing here is a bare number. */

/* bcc declares bpf_get_socket_cookie as returning u32; the cookie is 64-bit. */
static __u64 (*am_socket_cookie)(void *ctx) = (void *)BPF_FUNC_get_socket_cookie;
static __u64 (*am_netns_cookie)(void *ctx) = (void *)BPF_FUNC_get_netns_cookie;

/* The enrolled pod the current task belongs to, or 0.
 *
 * A pod is enrolled by one cgroup id, but its tasks may sit below that cgroup:
 * Kubernetes gives every container (app, sidecar, init) its own cgroup under the
 * pod's, and a container may nest further (systemd scopes). So the task's own cgroup
 * is tried first (local pods, whose processes live directly in the pod cgroup: one
 * lookup), then its ancestors; the nearest enrolled one wins. The walk goes from
 * level 1 down and stops at the task's own level: the helper is called only for
 * levels that exist (measured cheaper than starting from the deepest possible level
 * for traffic we do not capture), and instead of returning the first hit it keeps
 * the deepest. Level 0 (the root, where the node proxy lives) is never looked up. A
 * task at level d outside every pod costs d lookups. Enrollment refuses a pod cgroup
 * deeper than AM_MAX_POD_CGROUP_LEVEL, so no pod can be silently out of reach. */
static __always_inline struct am_pod_config *am_task_pod(void)
{
    __u64 own = bpf_get_current_cgroup_id();
    struct am_pod_config *pod = am_pods.lookup(&own);
    if (pod)
        return pod;
    struct am_pod_config *nearest = 0;
#pragma unroll
    for (int level = 1; level <= AM_MAX_POD_CGROUP_LEVEL; level++) {
        __u64 id = bpf_get_current_ancestor_cgroup_id(level);
        if (id == 0 || id == own)
            break;
        pod = am_pods.lookup(&id);
        if (pod)
            nearest = pod;
    }
    return nearest;
}

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
