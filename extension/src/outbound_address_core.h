/*
 * outbound_address_core.h
 *		Which network addresses an outbound webhook may connect to.
 *
 * Plain C (no PostgreSQL): the extension checks a webhook URL's addresses
 * when it is saved (alert_outbound.c), and the shim checks the very address
 * each connection is about to use (shim/outbound.c, from curl's open-socket
 * callback), so a name that resolves elsewhere later (DNS rebinding) is
 * still refused.
 */
#ifndef LATTICE_OUTBOUND_ADDRESS_CORE_H
#define LATTICE_OUTBOUND_ADDRESS_CORE_H

#include <stdbool.h>
#include <sys/socket.h>

/*
 * NULL when a connection to sa is allowed; otherwise why not, as one word:
 * "loopback", "private", "link-local", "metadata", "unspecified",
 * "multicast", "reserved", "shared" (carrier-grade NAT) or "family".
 * allow_loopback lets 127.0.0.0/8 and ::1 through (development and tests).
 * IPv4 addresses embedded in IPv6 (mapped, compatible, NAT64, 6to4) are
 * judged as the IPv4 address they carry.
 */
extern const char *outbound_address_refusal(const struct sockaddr *sa, bool allow_loopback);

#endif /* LATTICE_OUTBOUND_ADDRESS_CORE_H */
