/*
 * outbound_address_core.c
 *		Which network addresses an outbound webhook may connect to.
 *
 * Everything that is not a public unicast address is refused: a customer's
 * webhook URL must never reach the machine Lattice runs on, its private
 * network or a cloud's metadata service.  The ranges are those of the IANA
 * special-purpose registries (RFC 6890 and its updates).
 */
#include "outbound_address_core.h"

#include <netinet/in.h>
#include <stdint.h>
#include <string.h>

/* 169.254.169.254 (every cloud) and 169.254.170.2 (AWS ECS task metadata) */
#define V4(a, b, c, d) \
	(((uint32_t) (a) << 24) | ((uint32_t) (b) << 16) | ((uint32_t) (c) << 8) | (uint32_t) (d))

static bool
v4_in(uint32_t addr, uint32_t net, int bits)
{
	uint32_t mask = bits == 0 ? 0 : ~(uint32_t) 0 << (32 - bits);

	return (addr & mask) == (net & mask);
}

static const char *
v4_refusal(uint32_t a, bool allow_loopback)
{
	if (a == V4(169, 254, 169, 254) || a == V4(169, 254, 170, 2))
		return "metadata";
	if (v4_in(a, V4(127, 0, 0, 0), 8))
		return allow_loopback ? NULL : "loopback";
	if (v4_in(a, V4(0, 0, 0, 0), 8))
		return "unspecified";
	if (v4_in(a, V4(10, 0, 0, 0), 8) || v4_in(a, V4(172, 16, 0, 0), 12) ||
		v4_in(a, V4(192, 168, 0, 0), 16))
		return "private";
	if (v4_in(a, V4(100, 64, 0, 0), 10))
		return "shared";
	if (v4_in(a, V4(169, 254, 0, 0), 16))
		return "link-local";
	if (v4_in(a, V4(224, 0, 0, 0), 4))
		return "multicast";
	if (v4_in(a, V4(240, 0, 0, 0), 4) ||  /* reserved and broadcast */
		v4_in(a, V4(192, 0, 0, 0), 24) || /* IETF protocol assignments */
		v4_in(a, V4(192, 0, 2, 0), 24) || /* documentation */
		v4_in(a, V4(198, 51, 100, 0), 24) || v4_in(a, V4(203, 0, 113, 0), 24) ||
		v4_in(a, V4(198, 18, 0, 0), 15) || /* benchmarking */
		v4_in(a, V4(192, 88, 99, 0), 24))  /* 6to4 relay anycast */
		return "reserved";
	return NULL;
}

static uint32_t
v4_at(const uint8_t *p)
{
	return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) | ((uint32_t) p[2] << 8) | (uint32_t) p[3];
}

static bool
v6_prefix(const uint8_t *a, const uint8_t *prefix, int bits)
{
	int bytes = bits / 8;
	int rest = bits % 8;

	if (memcmp(a, prefix, bytes) != 0)
		return false;
	return rest == 0 || ((a[bytes] ^ prefix[bytes]) & (0xff << (8 - rest))) == 0;
}

static const char *
v6_refusal(const uint8_t *a, bool allow_loopback)
{
	static const uint8_t zero[16] = {0};
	static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	static const uint8_t nat64[12] = {0x00, 0x64, 0xff, 0x9b};
	static const uint8_t nat64_local[6] = {0x00, 0x64, 0xff, 0x9b, 0x00, 0x01};
	static const uint8_t sixtofour[2] = {0x20, 0x02};
	static const uint8_t teredo[4] = {0x20, 0x01, 0x00, 0x00};
	static const uint8_t documentation[4] = {0x20, 0x01, 0x0d, 0xb8};
	static const uint8_t discard[8] = {0x01, 0x00};
	static const uint8_t aws_metadata[16] = {0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0,	 0,
											 0,	   0,	 0,	   0,	 0, 0, 0x02, 0x54};
	static const uint8_t ula[1] = {0xfc};
	static const uint8_t link_local[2] = {0xfe, 0x80};
	static const uint8_t site_local[2] = {0xfe, 0xc0};
	static const uint8_t multicast[1] = {0xff};

	if (memcmp(a, zero, 15) == 0 && a[15] <= 1)
		return a[15] == 1 ? (allow_loopback ? NULL : "loopback") : "unspecified";
	/* IPv4 inside IPv6: judged as the IPv4 address */
	if (memcmp(a, mapped, 12) == 0 || memcmp(a, zero, 12) == 0 || memcmp(a, nat64, 12) == 0)
		return v4_refusal(v4_at(a + 12), allow_loopback);
	if (v6_prefix(a, sixtofour, 16))
		return v4_refusal(v4_at(a + 2), allow_loopback);
	if (memcmp(a, aws_metadata, 16) == 0)
		return "metadata";
	if (v6_prefix(a, ula, 7) || v6_prefix(a, site_local, 10))
		return "private";
	if (v6_prefix(a, link_local, 10))
		return "link-local";
	if (v6_prefix(a, multicast, 8))
		return "multicast";
	if (v6_prefix(a, nat64_local, 48) || v6_prefix(a, teredo, 32) || v6_prefix(a, documentation, 32) ||
		v6_prefix(a, discard, 64))
		return "reserved";
	return NULL;
}

const char *
outbound_address_refusal(const struct sockaddr *sa, bool allow_loopback)
{
	if (sa == NULL)
		return "family";
	if (sa->sa_family == AF_INET)
	{
		const struct sockaddr_in *in = (const struct sockaddr_in *) sa;

		return v4_refusal(ntohl(in->sin_addr.s_addr), allow_loopback);
	}
	if (sa->sa_family == AF_INET6)
	{
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) sa;

		return v6_refusal(in6->sin6_addr.s6_addr, allow_loopback);
	}
	return "family";
}
