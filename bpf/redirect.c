// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * redirect.c: the in-pod redirection of Ambient Lite.
 *
 * One sk_lookup program, attached to a pod's network namespace, steers the pod's TCP into
 * ztunnel's in-pod listening sockets, which ztunnel stores in a SOCKMAP with fixed slots:
 *
 *   inbound  TCP arriving on a non-loopback interface, to any port but HBONE (15008), and
 *            not from a probe source (kubelet) or the pod itself  -> slot 1 (ztunnel :15006)
 *   outbound TCP arriving on loopback to an address that is neither 127.0.0.0/8 nor one
 *            of the pod's own addresses: the pod's own connections, made locally
 *            deliverable by the policy-routing rule the loader adds  -> slot 0 (ztunnel :15001)
 *
 * An empty slot drops the packet (fail closed: the client's SYN is retransmitted until
 * ztunnel registers again); captured traffic never reaches the application unproxied.
 * Only IPv4 is steered today; IPv6 passes untouched (the address map already holds v6 keys).
 *
 * Keep the slot numbers and map names in step with pkg/capture.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

#define SLOT_OUTBOUND 0
#define SLOT_INBOUND 1

/* Flags of an address in ambient_config. */
#define ADDR_POD_IP 1	/* one of the pod's own addresses */
#define ADDR_PROBE_SRC 2 /* a kubelet probe source: its TCP is not steered */

#define MAX_ADDRS 64

/* Key of ambient_config: the family and the address in network order (IPv4 in addr[0]). */
struct addr_key {
	__u32 family;
	__u32 addr[4];
};

/*
 * ztunnel's listening sockets, by slot; pinned, and reused when the program is replaced.
 * Sizes rather than BTF types: the kernel refuses BTF key/value types on a SOCKMAP, and the
 * refused attempt (before the loader retries without BTF) costs a synchronize_rcu, ~25 ms.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 2);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u64));
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ambient_sockets SEC(".maps");

/* The pod's addresses and the probe sources, written once by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ADDRS);
	__type(key, struct addr_key);
	__type(value, __u32);
} ambient_config SEC(".maps");

/* Set by the loader before loading. */
volatile const __u32 lo_ifindex = 1;	/* loopback's ifindex in the pod netns */
volatile const __u32 hbone_port = 15008; /* never steered: ztunnel's HBONE listener gets it */

static __always_inline __u32 addr_flags(__u32 ip4)
{
	struct addr_key key = { .family = AF_INET, .addr = { ip4, 0, 0, 0 } };
	__u32 *flags = bpf_map_lookup_elem(&ambient_config, &key);

	return flags ? *flags : 0;
}

SEC("sk_lookup")
int ambient_redirect(struct bpf_sk_lookup *ctx)
{
	__u32 slot;

	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	if (ctx->family != AF_INET)
		return SK_PASS; /* IPv6: not steered yet */

	if (ctx->ingress_ifindex == lo_ifindex) {
		__u32 dst = ctx->local_ip4;

		if ((bpf_ntohl(dst) >> 24) == 127)
			return SK_PASS;
		if (addr_flags(dst) & ADDR_POD_IP)
			return SK_PASS;
		slot = SLOT_OUTBOUND;
	} else {
		if (ctx->local_port == hbone_port)
			return SK_PASS;
		/*
		 * The pod talking to one of its own addresses: the kernel reports the
		 * interface holding that address (eth0), not lo, as the ingress interface.
		 * A packet from the wire with a spoofed pod source gets here too, but its
		 * SYN-ACK is delivered locally, so it cannot complete a handshake.
		 */
		if (addr_flags(ctx->remote_ip4) & (ADDR_POD_IP | ADDR_PROBE_SRC))
			return SK_PASS;
		slot = SLOT_INBOUND;
	}

	struct bpf_sock *sk = bpf_map_lookup_elem(&ambient_sockets, &slot);
	if (!sk)
		return SK_DROP; /* ztunnel not registered: fail closed */
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return err ? SK_DROP : SK_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
