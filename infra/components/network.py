"""Network: a VPC over several availability zones, public subnets for the load balancer, private ones
for the GPU instances, and their way out (NAT, or VPC endpoints for S3 and SSM when NAT is off)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

# Interface endpoints an instance needs without NAT: SSM (Parameter Store and Session Manager) and
# CloudWatch's metrics API (monitoring: the instances publish their queue depth there).
INSTANCE_ENDPOINTS = ("ssm", "ssmmessages", "ec2messages", "monitoring")


@dataclass
class NetworkArgs:
    cidr: str
    availability_zones: int
    nat: str  # none, single, per-az
    # Further interface endpoints needed without NAT (e.g. secretsmanager when the keys live there).
    extra_endpoints: tuple[str, ...] = ()


def subnet_cidrs(cidr: str, zones: int) -> tuple[list[str], list[str]]:
    """Public and private subnets, one of each per zone: 16 equal blocks of the VPC, the first ones
    public, the ones from the middle private (room for more zones on both sides)."""
    network = ipaddress.ip_network(cidr)
    blocks = [str(b) for b in network.subnets(new_prefix=network.prefixlen + 4)]
    return blocks[:zones], blocks[8 : 8 + zones]


class Network(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    public_subnet_ids: list[pulumi.Output[str]]
    private_subnet_ids: list[pulumi.Output[str]]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("model-runtime:fleet:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        zones = aws.get_availability_zones_output(
            state="available",
            filters=[{"name": "opt-in-status", "values": ["opt-in-not-required"]}],
            opts=pulumi.InvokeOptions(parent=self),
        )

        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=args.cidr,
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags={"Name": f"{name}-vpc"},
            opts=child,
        )
        gateway = aws.ec2.InternetGateway(
            f"{name}-igw", vpc_id=vpc.id, tags={"Name": f"{name}-igw"}, opts=child
        )
        public_rt = aws.ec2.RouteTable(
            f"{name}-public",
            vpc_id=vpc.id,
            routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": gateway.id}],
            tags={"Name": f"{name}-public"},
            opts=child,
        )

        public_cidrs, private_cidrs = subnet_cidrs(args.cidr, args.availability_zones)
        public, private, private_tables = [], [], []
        for index in range(args.availability_zones):
            zone = zones.names.apply(lambda names, i=index: _zone(names, i, args.availability_zones))
            subnet = aws.ec2.Subnet(
                f"{name}-public-{index}",
                vpc_id=vpc.id,
                cidr_block=public_cidrs[index],
                availability_zone=zone,
                # Only the load balancer lives here; it gets its addresses without this.
                map_public_ip_on_launch=False,
                tags={"Name": f"{name}-public-{index}", "tier": "public"},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{index}", subnet_id=subnet.id, route_table_id=public_rt.id, opts=child
            )
            public.append(subnet)
            subnet = aws.ec2.Subnet(
                f"{name}-private-{index}",
                vpc_id=vpc.id,
                cidr_block=private_cidrs[index],
                availability_zone=zone,
                map_public_ip_on_launch=False,
                tags={"Name": f"{name}-private-{index}", "tier": "private"},
                opts=child,
            )
            private.append(subnet)

        # NAT: one per zone survives a zone's loss; one in total is cheaper; none relies on endpoints.
        nats = []
        if args.nat != "none":
            for index in range(args.availability_zones if args.nat == "per-az" else 1):
                address = aws.ec2.Eip(
                    f"{name}-nat-{index}", domain="vpc", tags={"Name": f"{name}-nat-{index}"}, opts=child
                )
                nats.append(
                    aws.ec2.NatGateway(
                        f"{name}-nat-{index}",
                        allocation_id=address.id,
                        subnet_id=public[index].id,
                        tags={"Name": f"{name}-nat-{index}"},
                        opts=pulumi.ResourceOptions(parent=self, depends_on=[gateway]),
                    )
                )
        for index, subnet in enumerate(private):
            routes = (
                [{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nats[index % len(nats)].id}] if nats else []
            )
            table = aws.ec2.RouteTable(
                f"{name}-private-{index}",
                vpc_id=vpc.id,
                routes=routes,
                tags={"Name": f"{name}-private-{index}"},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-private-{index}", subnet_id=subnet.id, route_table_id=table.id, opts=child
            )
            private_tables.append(table)

        # S3 through a gateway endpoint always: model downloads then cost no NAT traffic.
        region = aws.get_region_output(opts=pulumi.InvokeOptions(parent=self))
        aws.ec2.VpcEndpoint(
            f"{name}-s3",
            vpc_id=vpc.id,
            vpc_endpoint_type="Gateway",
            service_name=region.region.apply(lambda r: f"com.amazonaws.{r}.s3"),
            route_table_ids=[t.id for t in private_tables],
            tags={"Name": f"{name}-s3"},
            opts=child,
        )
        if args.nat == "none":
            endpoint_sg = aws.ec2.SecurityGroup(
                f"{name}-endpoints",
                vpc_id=vpc.id,
                description="HTTPS from the VPC to its interface endpoints",
                ingress=[
                    {
                        "protocol": "tcp",
                        "from_port": 443,
                        "to_port": 443,
                        "cidr_blocks": [args.cidr],
                        "description": "HTTPS from inside the VPC",
                    }
                ],
                tags={"Name": f"{name}-endpoints"},
                opts=child,
            )
            for service in (*INSTANCE_ENDPOINTS, *args.extra_endpoints):
                aws.ec2.VpcEndpoint(
                    f"{name}-{service}",
                    vpc_id=vpc.id,
                    vpc_endpoint_type="Interface",
                    service_name=region.region.apply(lambda r, s=service: f"com.amazonaws.{r}.{s}"),
                    subnet_ids=[s.id for s in private],
                    security_group_ids=[endpoint_sg.id],
                    private_dns_enabled=True,
                    tags={"Name": f"{name}-{service}"},
                    opts=child,
                )

        self.vpc_id = vpc.id
        self.public_subnet_ids = [s.id for s in public]
        self.private_subnet_ids = [s.id for s in private]
        self.register_outputs(
            {
                "vpc_id": self.vpc_id,
                "public_subnet_ids": self.public_subnet_ids,
                "private_subnet_ids": self.private_subnet_ids,
            }
        )


def _zone(names: list[str], index: int, wanted: int) -> str:
    if len(names) < wanted:
        raise pulumi.RunError(
            f"model-runtime:network.availabilityZones: {wanted} wanted, "
            f"the region offers {len(names)} ({', '.join(names)})"
        )
    return names[index]
