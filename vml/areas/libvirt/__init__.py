"""libvirt working areas: the names vml and the tests use, loaded only through kinds.libvirt_module()."""

from vml.areas.libvirt.area import LibvirtArea
from vml.areas.libvirt.definition import (
    Sizing,
    definitions_differ,
    deployed_domain_xml,
    deployment_of,
    forwarded_port,
    host_facing,
    new_domain_xml,
    with_forwarded_port,
)
from vml.areas.libvirt.driver import Domain, VmInfo, connect, domains_using, unused_uuid
from vml.areas.libvirt.embed import embedded_root
from vml.areas.libvirt.host import free_port, image_format, kvm_usable, loopback_of, make_overlay, port_taken

__all__ = [
    "Domain",
    "LibvirtArea",
    "Sizing",
    "VmInfo",
    "connect",
    "definitions_differ",
    "deployed_domain_xml",
    "deployment_of",
    "domains_using",
    "embedded_root",
    "forwarded_port",
    "free_port",
    "host_facing",
    "image_format",
    "kvm_usable",
    "loopback_of",
    "make_overlay",
    "new_domain_xml",
    "port_taken",
    "unused_uuid",
    "with_forwarded_port",
]
