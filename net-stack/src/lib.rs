//! Sans-IO virtual network behind a guest NIC: Ethernet, ARP, IPv4, ICMP, DHCP, DNS and TCP over smoltcp.
