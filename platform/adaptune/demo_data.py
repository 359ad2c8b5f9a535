"""Deterministic generator of the instruction-style demo company FAQ dataset (fictional Nimbus Router X2)."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

PRODUCT = "Nimbus Router X2"
COMPANY = "Aerolith Networks"
APP = "Aerolith Home app"

FIELDS: tuple[str, str, str] = ("instruction", "input", "output")

# Share of rows that carry a non-empty ``input`` (customer situation / account context).
INPUT_SHARE = 0.25


@dataclass(frozen=True)
class Fact:
    """One product fact: question paraphrases, consistent answers and optional situations.

    Attributes:
        key: Stable identifier of the fact.
        questions: Question templates; may contain placeholders such as ``{product}`` or ``{mine}``.
        answers: Paraphrased answers that all state the same facts (1-3 sentences each).
        contexts: Fact-specific customer situations usable as ``input``; placeholders allowed.
    """

    key: str
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    contexts: tuple[str, ...] = ()


# Single source of truth for the numbers quoted in the answers below.
FACT_TABLE: dict[str, str] = {
    "price_1": "$179",
    "price_2": "$319",
    "price_3": "$429",
    "shield_plus": "$4.99 per month or $49 per year",
    "shield_pro": "$9.99 per month or $99 per year",
    "warranty": "2-year limited hardware warranty",
    "aerocare": "$39",
    "return_days": "30 days",
    "refund_days": "5-7 business days",
    "phone": "1-800-555-0142",
    "email": "support@aerolith.example",
    "phone_hours": "Monday to Friday 8 AM-8 PM ET and Saturday 9 AM-5 PM ET",
    "coverage_main": "2,000 sq ft (about 185 m²)",
    "coverage_node": "1,500 sq ft (about 140 m²)",
    "max_nodes": "6",
    "max_devices": "150",
    "firmware": "3.4.2",
    "update_window": "2-4 AM local time",
    "admin_url": "http://192.168.50.1",
}

F = FACT_TABLE

FACTS: tuple[Fact, ...] = (
    # ----------------------------------------------------------------- pricing
    Fact(
        "price",
        (
            "How much does {product} cost?",
            "What's the price of {product}?",
            "How much is a single Nimbus Router X2 unit?",
            "What do the multi-packs of {product} cost?",
            "Is a 3-pack of the Nimbus X2 cheaper than buying three single units?",
            "What would it cost me to cover my home with {product}?",
            "Can you tell me the current pricing for the Nimbus Router X2 kits?",
        ),
        (
            f"The {PRODUCT} costs {F['price_1']} for a single unit, {F['price_2']} for a 2-pack and "
            f"{F['price_3']} for a 3-pack. The multi-packs work out cheaper per unit than buying singles.",
            f"A single {PRODUCT} is {F['price_1']}, the 2-pack is {F['price_2']} and the 3-pack is "
            f"{F['price_3']}, so larger kits save you money per node.",
        ),
        (
            "I'm comparing mesh systems for a {size} sq ft {home}.",
            "Budget is tight, I'm trying to decide between one unit and a kit.",
            "Customer {name} is shopping for a new router for {a_home}.",
        ),
    ),
    Fact(
        "shield_plans",
        (
            "What subscription plans are available for {product}?",
            "What is Aerolith Shield and how much does it cost?",
            "What's the difference between Shield Plus and Shield Pro?",
            "Do I have to pay a monthly fee to use {product}?",
            "Which Aerolith Shield tier includes the VPN?",
            "How much is Shield Plus per year?",
            "Are there any subscription tiers for extra security features?",
        ),
        (
            "The router works fully without a subscription; the free Shield Basic tier covers core "
            f"security. Shield Plus ({F['shield_plus']}) adds advanced threat protection and content "
            f"filtering, and Shield Pro ({F['shield_pro']}) adds the Aerolith VPN and up to 5 VPN devices on "
            "top of that.",
            f"No monthly fee is required: Shield Basic is free. Shield Plus costs {F['shield_plus']} and "
            "adds advanced threat protection and content filtering, while Shield Pro costs "
            f"{F['shield_pro']} and also includes the Aerolith VPN for up to 5 devices.",
        ),
        (
            "Customer {name} is on the free Shield Basic tier and considering an upgrade.",
            "I mostly want better protection for the kids' tablets.",
            "Account {order} currently has no paid subscription.",
        ),
    ),
    Fact(
        "shield_trial_cancel",
        (
            "Is there a free trial of Shield Plus?",
            "How do I cancel my Aerolith Shield subscription?",
            "If I cancel Shield Pro, do I lose access immediately?",
            "Can I try the paid security features before paying?",
            "How do I stop being billed for Shield?",
            "Will I get charged after the Shield trial ends?",
        ),
        (
            "Shield Plus and Shield Pro both come with a 30-day free trial. You can cancel any time in the "
            f"{APP} under Account > Subscriptions, and your plan stays active until the end of the current "
            "billing period.",
            "Both paid Shield tiers start with a 30-day free trial, and the trial converts to a paid plan "
            f"unless you cancel. Cancel any time in the {APP} under Account > Subscriptions; access "
            "continues until the billing period ends.",
        ),
        (
            "Started a Shield Pro trial {days} days ago.",
            "Customer {name} was billed for Shield Plus this month and wants to stop.",
        ),
    ),
    # --------------------------------------------------------------- warranty
    Fact(
        "warranty",
        (
            "How long is the warranty on {product}?",
            "What warranty comes with {product}?",
            "Is {product} covered by a warranty?",
            "Is my router still under warranty?",
            "What does the warranty on the Nimbus X2 cover?",
            "Does the warranty start from when I bought it or when I set it up?",
        ),
        (
            f"The {PRODUCT} comes with a {F['warranty']} starting from the date of purchase. It covers "
            "defects in materials and workmanship, but not accidental or water damage.",
            f"Every {PRODUCT} has a {F['warranty']} from the purchase date covering manufacturing defects. "
            "Accidental damage and water damage are not covered.",
        ),
        (
            "Bought the router {months} months ago. Serial number {serial}.",
            "Customer {name}, order {order}, purchased {months} months ago.",
            "The unit was a gift, I'm not sure of the purchase date. Serial {serial}.",
        ),
    ),
    Fact(
        "aerocare",
        (
            "Can I extend the warranty on {product}?",
            "What is AeroCare?",
            "How much does the extended warranty cost?",
            "Is there an extended protection plan for the Nimbus X2?",
            "How long can I extend the warranty for?",
            "When do I need to buy AeroCare by?",
        ),
        (
            f"AeroCare extends the hardware warranty to 4 years in total for {F['aerocare']} per unit. "
            "It must be purchased within 60 days of buying the router.",
            f"AeroCare is our extended warranty: it costs {F['aerocare']} per unit and extends coverage to "
            "4 years from purchase. You can add it within 60 days of your original purchase.",
        ),
        (
            "I bought a 3-pack {days} days ago, order {order}.",
            "Customer {name} wants longer coverage for a home office setup.",
        ),
    ),
    Fact(
        "warranty_claim",
        (
            "How do I make a warranty claim?",
            "My Nimbus X2 stopped working, how do I get it replaced under warranty?",
            "Where do I file a warranty claim for {mine}?",
            "What do I need to start a warranty replacement?",
            "Where can I find the serial number for a warranty claim?",
            "How does the warranty replacement process work?",
        ),
        (
            f"Open the {APP} and go to Support > Warranty Claim, or use the support website, and enter the "
            "serial number from the label on the underside of the unit (it starts with NX2-). Once the "
            "claim is approved we ship a replacement along with a prepaid return label.",
            f"Start a claim in the {APP} under Support > Warranty Claim or on our support site. You'll need "
            "the serial number printed on the bottom label, which begins with NX2-; approved claims get a "
            "replacement unit and a prepaid label to send the faulty one back.",
        ),
        (
            "Unit with serial {serial} shows a solid red light after a factory reset.",
            "Customer {name}, order {order}. One of the satellite nodes won't power on.",
            "Purchased {months} months ago, the main unit keeps rebooting.",
        ),
    ),
    # ---------------------------------------------------------- returns / orders
    Fact(
        "returns",
        (
            "What is your return policy?",
            "Can I return {mine} if it doesn't work for me?",
            "How many days do I have to return the Nimbus X2?",
            "Can I return an opened router?",
            "Is there a restocking fee for returns?",
            "I changed my mind about {mine}, can I send it back?",
            "How do I return my order?",
        ),
        (
            f"You can return the {PRODUCT} within {F['return_days']} of delivery for a full refund, even if "
            "the box has been opened. Please include all accessories; there is no restocking fee. Start the "
            "return from the Orders page on our website.",
            f"Returns are accepted within {F['return_days']} of delivery, opened or not, and there is no "
            "restocking fee as long as all accessories are included. Request the return from the Orders "
            "page on our website to get a prepaid label.",
        ),
        (
            "Order {order}, delivered {days} days ago.",
            "Customer {name} says the coverage isn't enough for their {home}.",
            "Box has been opened and the router was set up once.",
        ),
    ),
    Fact(
        "refund_timing",
        (
            "When will I get my refund?",
            "How long does a refund take after I return the router?",
            "I sent my Nimbus X2 back, when will the money show up?",
            "How long until my return is refunded?",
            "Where is my refund?",
        ),
        (
            f"Refunds are issued to your original payment method within {F['refund_days']} after we receive "
            "the returned item. You'll get an email as soon as the refund has been processed.",
            "Once the return reaches our warehouse, the refund goes back to your original payment method "
            f"within {F['refund_days']}. We send a confirmation email when it's processed.",
        ),
        (
            "Return for order {order} was dropped off {days} days ago.",
            "Customer {name} paid by credit card and returned a 2-pack.",
        ),
    ),
    Fact(
        "shipping",
        (
            "How much is shipping?",
            "How long does delivery take for {product}?",
            "Do you offer express shipping?",
            "Is shipping free?",
            "Do you ship to Canada?",
            "Where do you ship the Nimbus X2?",
        ),
        (
            "Standard shipping is free and takes 3-5 business days; express shipping takes 1-2 business days "
            "for $14. We currently ship to the United States and Canada.",
            "We ship free with standard delivery in 3-5 business days, or express in 1-2 business days for "
            "$14. Shipping is available to addresses in the US and Canada.",
        ),
        (
            "Customer {name} lives in {city}.",
            "Need the router before the weekend, it's for a new office.",
        ),
    ),
    Fact(
        "order_tracking",
        (
            "How can I track my order?",
            "Where is my Nimbus X2 order?",
            "I haven't received a tracking number yet, is that normal?",
            "How do I check the status of my order?",
            "When will I get the tracking email?",
        ),
        (
            "You'll receive a tracking email within 24 hours of your order shipping. You can also see the "
            "status and tracking link at any time on the Orders page of our website.",
            "A tracking email is sent within 24 hours after your order ships, and the Orders page on our "
            "website always shows the current status and tracking link.",
        ),
        (
            "Order {order}, placed {days} days ago.",
            "Customer {name} ordered a 3-pack with standard shipping.",
        ),
    ),
    Fact(
        "order_cancel",
        (
            "Can I cancel my order?",
            "How do I cancel an order I just placed?",
            "I ordered the wrong pack size, can I cancel?",
            "Is it too late to cancel my Nimbus X2 order?",
            "Can I change my order from a 2-pack to a 3-pack?",
        ),
        (
            "Orders can be canceled free of charge until they ship, from the Orders page on our website. "
            "If it has already shipped, you can return it instead within 30 days of delivery.",
            "You can cancel for free from the Orders page as long as the order hasn't shipped yet. To change "
            "the pack size, cancel and reorder; if it already shipped, use the 30-day return instead.",
        ),
        (
            "Order {order} was placed {hours} hours ago.",
            "Customer {name} accidentally ordered two single units instead of a 2-pack.",
        ),
    ),
    # ---------------------------------------------------------------- support
    Fact(
        "support_hours",
        (
            "What are your support hours?",
            "When can I call Aerolith support?",
            "Is phone support open on weekends?",
            "Is live chat available 24/7?",
            "What time does customer support close?",
            "Can I reach someone on a Sunday?",
        ),
        (
            f"Phone support is available {F['phone_hours']}. Live chat in the {APP} and on our website is open 24/7.",
            f"You can call us {F['phone_hours']}, and live chat in the {APP} or on our website is available "
            "24 hours a day, 7 days a week, including Sundays.",
        ),
        (
            "Customer {name} is in {city} and works until 6 PM.",
            "It's the weekend and the internet is down.",
        ),
    ),
    Fact(
        "support_contact",
        (
            "How do I contact Aerolith support?",
            "What's the phone number for {product} support?",
            "Is there an email address for support?",
            "How can I talk to a person about my router?",
            "What is the support phone number?",
        ),
        (
            f"You can call us at {F['phone']}, email {F['email']}, or use live chat in the {APP} under "
            "Support. Email replies usually arrive within one business day.",
            f"Reach Aerolith Networks support by phone at {F['phone']}, by email at {F['email']}, or through "
            f"live chat in the {APP}. We answer emails within one business day.",
        ),
        (
            "Customer {name}, order {order}.",
            "I prefer email over phone calls.",
        ),
    ),
    # ------------------------------------------------------------------ setup
    Fact(
        "setup",
        (
            "How do I set up {product}?",
            "What are the setup steps for a new Nimbus X2?",
            "I just unboxed {mine}, what do I do first?",
            "How do I install my new Aerolith router?",
            "Can you walk me through the initial setup?",
            "Do I need the app to set up {product}?",
            "How long does it take to set up the Nimbus Router X2?",
        ),
        (
            f"Download the {APP}, connect your modem to the blue WAN port with the included Ethernet cable "
            "and power on the router. When the LED pulses white, scan the QR code on the bottom of the unit "
            "in the app and follow the prompts; setup takes about 10 minutes.",
            f"Install the {APP}, plug your modem into the blue WAN port and power the router on. Once the "
            "light is pulsing white, scan the QR code on the underside in the app and follow the steps, "
            "which usually takes around 10 minutes.",
        ),
        (
            "Customer {name} has a {isp} connection and an iPhone.",
            "Replacing an old ISP router in {a_home}.",
            "First time setting up a mesh system, bought a {pack}.",
        ),
    ),
    Fact(
        "add_node",
        (
            "How do I add another Nimbus X2 node to my network?",
            "How do I set up the satellite units?",
            "I bought another Nimbus X2 unit, how do I add it to my mesh?",
            "Where should I place the second node?",
            "How far apart should the mesh nodes be?",
            "How do I pair a new satellite with my main router?",
        ),
        (
            f"In the {APP}, go to Devices > Add Node and plug in the new unit about 10-15 m (30-50 ft) from "
            "an existing node, ideally with no more than two walls in between. It pairs automatically and "
            "the LED turns solid white when it's ready.",
            f"Open Devices > Add Node in the {APP}, then power the new unit on roughly 10-15 m (30-50 ft) "
            "from another node with at most two walls in between. The LED pulses blue while pairing and "
            "turns solid white once it has joined.",
        ),
        (
            "Customer {name} has a two-storey home with the modem in the basement.",
            "Main unit serial {serial}; the new node is going in the garage.",
            "Bought a {pack} and the main unit is already online.",
        ),
    ),
    Fact(
        "backhaul",
        (
            "Does {product} support Ethernet backhaul?",
            "Can I connect the nodes with network cables?",
            "My house has Ethernet in the walls, can the mesh use it?",
            "How do I enable wired backhaul?",
            "Is a wired connection between nodes faster?",
        ),
        (
            "Ethernet backhaul is supported: connect a LAN port on one node to a port on another node "
            "(directly or through a switch) and the system detects and uses the wired backhaul "
            "automatically, with no settings to change.",
            "Ethernet backhaul is supported and automatic: plug the nodes together with a cable or via a "
            "switch and they switch to the wired link, which frees up Wi-Fi bandwidth for your devices.",
        ),
        (
            "Every room in the {home} has a wired Ethernet jack.",
            "Customer {name} has a 3-pack and a gigabit switch.",
        ),
    ),
    Fact(
        "isp_compat",
        (
            "Will {product} work with my internet provider?",
            "Does the Nimbus X2 work with fiber?",
            "Can {product} replace the router my ISP gave me?",
            "Does the router support PPPoE?",
            "Is the Nimbus X2 compatible with DSL?",
            "Do I still need my modem with {product}?",
        ),
        (
            "The Nimbus Router X2 works with any cable, fiber or DSL modem or ONT and supports PPPoE and "
            "VLAN tagging. It replaces your ISP's router, but you still need a modem or ONT to connect to "
            "the internet.",
            "It's compatible with cable, fiber and DSL service and supports PPPoE and VLAN tagging for ISPs "
            "that require them. You still need your modem or fiber ONT, but the X2 can replace the ISP "
            "router.",
        ),
        (
            "Customer {name} has {isp} internet.",
            "My ISP gave me a combined modem/router.",
        ),
    ),
    Fact(
        "bridge_mode",
        (
            "Can I put {mine} in bridge mode?",
            "How do I use the Nimbus X2 as an access point only?",
            "I want to keep my ISP router, can the X2 run in bridge mode?",
            "How do I fix double NAT with {product}?",
            "Where is the operating mode setting?",
        ),
        (
            f"Bridge mode is available: switch to it in the {APP} under Advanced > Operating Mode. In bridge "
            "mode your existing router handles routing while the Nimbus mesh provides Wi-Fi, but Shield and "
            "parental controls are disabled.",
            f"Bridge mode is available in the {APP} under Advanced > Operating Mode and removes double NAT. "
            "Note that Shield features and parental controls don't work in bridge mode.",
        ),
        (
            "Customer {name} uses {isp} and their ISP router can't be disabled.",
            "Gaming console reports strict NAT type.",
        ),
    ),
    # --------------------------------------------------------------- hardware
    Fact(
        "coverage",
        (
            "How much area does a single Nimbus X2 cover?",
            "How many nodes do I need for my home?",
            "What's the Wi-Fi range of the Nimbus X2?",
            "How many Nimbus X2 units can I have in one network?",
            "Will one unit be enough for my place?",
            "What is the maximum number of nodes in a mesh?",
        ),
        (
            f"One unit covers up to {F['coverage_main']}, and each additional node adds roughly "
            f"{F['coverage_node']}. You can have up to {F['max_nodes']} nodes in one network.",
            f"A single {PRODUCT} covers about {F['coverage_main']}; every extra node adds around "
            f"{F['coverage_node']}, up to a maximum of {F['max_nodes']} nodes per network.",
        ),
        (
            "Customer {name} has a {size} sq ft {home}.",
            "Thick concrete walls, three floors.",
            "I'm thinking about a {pack}.",
        ),
    ),
    Fact(
        "wifi_specs",
        (
            "Which Wi-Fi standard does {product} support?",
            "Is the Nimbus X2 Wi-Fi 6E?",
            "How fast is {product}?",
            "Does the router have a 6 GHz band?",
            "What are the wireless specs of the Nimbus Router X2?",
            "Is {product} tri-band?",
        ),
        (
            "The Nimbus Router X2 is a tri-band Wi-Fi 6E router with 2.4 GHz, 5 GHz and 6 GHz bands and up "
            "to 5.4 Gbps combined wireless speed. Older Wi-Fi devices connect normally on 2.4 or 5 GHz.",
            "It supports Wi-Fi 6E on three bands (2.4, 5 and 6 GHz) with up to 5.4 Gbps combined throughput, "
            "and it stays backward compatible with older Wi-Fi devices.",
        ),
        (
            "Customer {name} has a new laptop with Wi-Fi 6E.",
            "Most of my devices are a few years old.",
        ),
    ),
    Fact(
        "ports",
        (
            "What ports does {product} have?",
            "How many Ethernet ports are on the Nimbus X2?",
            "Does the router have a 2.5 gig port?",
            "Can I plug my desktop into {mine} with a cable?",
            "Which port do I connect the modem to?",
            "Does {product} have a USB port?",
        ),
        (
            "Each unit has one 2.5 Gbps WAN port (blue), two 1 Gbps LAN ports and a USB-C port that is used "
            "for power only. Connect your modem to the blue WAN port.",
            "There is a blue 2.5 Gbps WAN port for your modem, two gigabit LAN ports for wired devices, and "
            "a USB-C port for power; there's no USB storage sharing.",
        ),
        (
            "Customer {name} has a {isp} plan and a desktop PC plus a game console.",
            "I want to wire my NAS and a printer.",
        ),
    ),
    Fact(
        "max_devices",
        (
            "How many devices can connect to {product}?",
            "Is there a limit on connected devices?",
            "Can the Nimbus X2 handle lots of smart home devices?",
            "Will the router cope with 60 devices?",
            "What's the maximum number of clients per node?",
        ),
        (
            f"Each {PRODUCT} unit supports up to {F['max_devices']} connected devices, so a mesh with more "
            "nodes can handle even more. The 2.4 GHz band works well for smart home gadgets.",
            f"Up to {F['max_devices']} devices can connect to each unit, and adding nodes raises the total "
            "for the whole network.",
        ),
        (
            "Customer {name} has about {count} smart home devices.",
            "Small office with {count} laptops and phones.",
        ),
    ),
    Fact(
        "x1_compat",
        (
            "Can I use my old Nimbus Router X1 with the X2?",
            "Is {product} compatible with the Nimbus X1?",
            "Can I mix X1 and X2 nodes in one mesh?",
            "I have an X1 already, can it be a satellite for the X2?",
        ),
        (
            "Yes, Nimbus Router X1 units can join an X2 network as satellite nodes after updating to the "
            "latest firmware. The X2 must be the main router, and the X1 nodes don't add the 6 GHz band.",
            "You can mix them: an updated Nimbus X1 can act as a satellite node in an X2 mesh, but the X2 "
            "has to be the main unit and the X1 won't broadcast on 6 GHz.",
        ),
        (
            "Customer {name} owns two X1 units from a few years ago.",
            "Upgrading from a Nimbus X1 single unit.",
        ),
    ),
    Fact(
        "power",
        (
            "How much power does {product} use?",
            "What's the power consumption of the Nimbus X2?",
            "Does the router use a lot of electricity?",
            "What power adapter does the Nimbus X2 use?",
        ),
        (
            "A Nimbus Router X2 uses about 12 W in typical operation and up to 18 W at peak. It is powered "
            "through the USB-C port with the included 24 W adapter.",
            "Typical power draw is around 12 W, with a maximum of 18 W. Use the included 24 W USB-C power adapter.",
        ),
        (
            "Lost the original power adapter.",
            "Customer {name} is trying to reduce standby power in {a_home}.",
        ),
    ),
    Fact(
        "colors",
        (
            "What colors does {product} come in?",
            "Is the Nimbus X2 available in black?",
            "How big is the Nimbus Router X2?",
            "Can I wall-mount {product}?",
        ),
        (
            "The Nimbus Router X2 comes in Frost White and Graphite and measures 11 x 11 x 12 cm. It is "
            "designed to stand on a shelf or table; a separate wall mount is sold as an accessory.",
            "You can choose Frost White or Graphite. Each unit is 11 x 11 x 12 cm and is meant to sit "
            "upright, with an optional wall mount accessory available.",
        ),
        ("Customer {name} wants it to match a dark TV stand.",),
    ),
    # ------------------------------------------------------------------- LEDs
    Fact(
        "led_solid_white",
        (
            "What does a solid white light on {mine} mean?",
            "My Nimbus X2 light is steady white, is that good?",
            "The LED stays white, is everything OK?",
            "What does solid white mean on the router?",
        ),
        (
            "A solid white LED means the unit is online and working normally. No action is needed.",
            "Solid white means everything is fine: the router is connected to the internet and working normally.",
        ),
        (
            "Main unit serial {serial}.",
            "Just finished setup on a {pack}.",
        ),
    ),
    Fact(
        "led_pulsing_white",
        (
            "What does a pulsing white light mean?",
            "The light on {mine} is slowly pulsing white, what does it mean?",
            "Why is my Nimbus X2 breathing white?",
            "My router has been pulsing white for a while, what should I do?",
        ),
        (
            "Pulsing white means the unit is starting up or ready to be set up. If it keeps pulsing for "
            f"more than 5 minutes, open the {APP} and run setup or add it as a node.",
            "A pulsing white light shows the router is booting or waiting for setup. If it hasn't changed "
            f"after 5 minutes, finish setup in the {APP}.",
        ),
        (
            "Just did a factory reset on serial {serial}.",
            "The light has been like this for {minutes} minutes.",
        ),
    ),
    Fact(
        "led_solid_amber",
        (
            "What does a solid amber light mean on {mine}?",
            "My router light is orange, what's wrong?",
            "The Nimbus X2 LED is steady yellow, what does that mean?",
            "Why is the light amber and I have no internet?",
            "Solid orange LED on the router, how do I fix it?",
        ),
        (
            "Solid amber means the router has no internet connection from the modem. Restart your modem, "
            "check that the cable is in the blue WAN port, and contact your internet provider if it stays "
            "amber.",
            "A steady amber light means there's no internet coming from your modem. Power-cycle the modem, "
            "make sure the Ethernet cable is plugged into the blue WAN port, and call your ISP if it doesn't "
            "turn white.",
        ),
        (
            "Customer {name} has {isp}; the light turned amber {minutes} minutes ago.",
            "Just moved the router to another room.",
            "Serial {serial}, amber since a power outage.",
        ),
    ),
    Fact(
        "led_blinking_amber",
        (
            "What does a blinking amber light mean?",
            "The Nimbus X2 LED is flashing orange, is it broken?",
            "Why is {mine} blinking yellow?",
            "My router is flashing amber, can I unplug it?",
        ),
        (
            "Blinking amber means a firmware update is being installed. Do not unplug the unit; the update "
            "usually takes about 5 minutes, and the light turns white again when it's done.",
            "A flashing amber light means the router is updating its firmware. Leave it plugged in; it "
            "finishes in roughly 5 minutes and returns to solid white.",
        ),
        (
            "It started blinking around {clock}.",
            "Customer {name} needs to move the router right now.",
        ),
    ),
    Fact(
        "led_pulsing_blue",
        (
            "What does a pulsing blue light mean on {mine}?",
            "Why is my Nimbus X2 light blue?",
            "The new node is blinking blue, what is it doing?",
            "What does the blue light mean?",
        ),
        (
            "Pulsing blue means the unit is in pairing mode, for example while it's being added as a node. "
            f"Keep it powered on and finish the Add Node step in the {APP}.",
            "A blue pulsing light shows the router is pairing with your mesh. Leave it on and complete "
            f"Devices > Add Node in the {APP}; it turns solid white when it has joined.",
        ),
        (
            "Adding the third unit of a 3-pack.",
            "Serial {serial} has been blue for {minutes} minutes.",
        ),
    ),
    Fact(
        "led_solid_red",
        (
            "What does a red light on {mine} mean?",
            "My Nimbus X2 LED is solid red, what do I do?",
            "Why is my router showing red?",
            "Red light on the router, is it dead?",
        ),
        (
            "Solid red indicates a hardware fault. Try a factory reset by holding the reset button for "
            "10 seconds, and if the light is still red afterward, contact support to start a warranty claim.",
            "A solid red LED means the unit detected a hardware problem. Do a factory reset (hold reset for "
            "10 seconds); if it stays red, please contact support so we can arrange a warranty replacement.",
        ),
        (
            "Serial {serial}, bought {months} months ago.",
            "Customer {name} says it turned red after a thunderstorm.",
        ),
    ),
    Fact(
        "led_off",
        (
            "Why is the light on {mine} off?",
            "The LED on my Nimbus X2 isn't lit but Wi-Fi works, why?",
            "How do I turn off the router light at night?",
            "Can I dim the LED on the Nimbus X2?",
            "There's no light at all on the router, what does that mean?",
        ),
        (
            f"If Wi-Fi still works, Night Mode is probably on; you can turn the LED off or on in the {APP} "
            "under Settings > LED. If Wi-Fi is down too, the unit has no power, so check the adapter and "
            "outlet.",
            f"The LED can be switched off with Night Mode in the {APP} (Settings > LED). No light and no "
            "Wi-Fi means the router isn't getting power, so check the USB-C adapter and the outlet.",
        ),
        (
            "The router is in a bedroom.",
            "Customer {name}: node serial {serial} shows no light.",
        ),
    ),
    # --------------------------------------------------------------- firmware
    Fact(
        "firmware_updates",
        (
            "How do I update the firmware on {mine}?",
            "Does the Nimbus X2 update itself?",
            "When does {product} install updates?",
            "What's the latest firmware version for the Nimbus X2?",
            "How do I check for a firmware update?",
            "Will a firmware update interrupt my internet?",
        ),
        (
            f"Firmware updates install automatically during a nightly window ({F['update_window']}), and the "
            f"latest version is {F['firmware']}. You can also check manually in the {APP} under Settings > "
            "Firmware; the internet drops for a few minutes while the unit restarts.",
            f"The router updates itself overnight between {F['update_window'].replace('-', ' and ')}. To "
            f"check now, open Settings > Firmware in the {APP}; the current release is {F['firmware']}, and "
            "installing it takes about 5 minutes of downtime.",
        ),
        (
            "Customer {name} works night shifts from home.",
            "App shows the main unit on an older firmware version.",
        ),
    ),
    # -------------------------------------------------------- troubleshooting
    Fact(
        "factory_reset",
        (
            "How do I factory reset {mine}?",
            "How do I reset the Nimbus X2 to default settings?",
            "Where is the reset button?",
            "I want to start over with setup, how do I reset the router?",
            "What happens when I factory reset the Nimbus X2?",
        ),
        (
            "Press and hold the reset button on the back with a paperclip for 10 seconds until the LED "
            "starts pulsing white. This erases all settings, including your Wi-Fi name and password, so "
            "you'll need to set it up again in the app.",
            "Use a paperclip to hold the recessed reset button on the back for 10 seconds, until the light "
            "pulses white. All settings are wiped, so run setup again in the app afterward.",
        ),
        (
            "Serial {serial}, selling the router to a friend.",
            "Customer {name} forgot the admin account used during setup.",
            "Moving the router to a new {home}.",
        ),
    ),
    Fact(
        "restart",
        (
            "How do I restart {mine}?",
            "What's the right way to reboot the Nimbus X2?",
            "Can I restart the router from my phone?",
            "Is it OK to just unplug the router to restart it?",
        ),
        (
            f"Restart it from the {APP} under Devices > select the unit > Restart, or unplug it for 30 "
            "seconds and plug it back in. A restart keeps all your settings.",
            f"You can reboot remotely in the {APP} (Devices > choose the unit > Restart) or unplug the power "
            "for 30 seconds. Your settings are kept either way.",
        ),
        (
            "Customer {name} is away from home this week.",
            "Internet has been unstable for {hours} hours.",
        ),
    ),
    Fact(
        "slow_speeds",
        (
            "Why is my internet slow with {mine}?",
            "My Wi-Fi is slow in one room, how can I fix it?",
            "Speeds on the Nimbus X2 are lower than my plan, what should I do?",
            "How do I improve Wi-Fi performance?",
            "The connection is slow on the far node, any tips?",
            "Why do I only get half my internet speed over Wi-Fi?",
        ),
        (
            f"Run the speed test in the {APP} to compare the router's connection with your plan, make sure "
            "the firmware is up to date, and move any far node closer (within 10-15 m of another node). If "
            "the router's own speed is low, contact your internet provider.",
            f"First run the built-in speed test in the {APP}: if the router itself gets your plan speed, "
            "move nodes closer together (10-15 m apart) and update the firmware. If the router's speed is "
            "already low, the issue is likely with your internet provider.",
        ),
        (
            "Customer {name} pays for {speed} Mbps but sees about {low} Mbps on Wi-Fi.",
            "The slow room is {floors} floors away from the main unit.",
            "Speed drops mostly in the evenings.",
        ),
    ),
    Fact(
        "no_internet",
        (
            "My Nimbus X2 says no internet, what should I do?",
            "Wi-Fi is connected but there's no internet, how do I fix it?",
            "The internet went down on {mine}, what do I check first?",
            "Devices connect to the Wi-Fi but websites don't load, help?",
            "How do I troubleshoot a lost connection?",
        ),
        (
            "Restart your modem first, wait 2 minutes, then restart the router. Check that the Ethernet "
            "cable is firmly in the blue WAN port; if the LED stays amber, the outage is likely with your "
            "internet provider.",
            "Power-cycle the modem, give it 2 minutes, then restart the Nimbus router, and make sure the "
            "modem cable is in the blue WAN port. A light that stays amber usually means an outage on your "
            "internet provider's side.",
        ),
        (
            "Customer {name}, {isp} service, outage started around {clock}.",
            "Only some devices are affected.",
            "The router LED is solid amber.",
        ),
    ),
    Fact(
        "wifi_password",
        (
            "I forgot my Wi-Fi password, how do I find it?",
            "How do I change the Wi-Fi password on {mine}?",
            "Where can I see my Wi-Fi password?",
            "How do I rename my Wi-Fi network?",
            "Can I change the network name and password in the app?",
        ),
        (
            f"Open the {APP} and go to Network > Wi-Fi Settings, where you can view, share or change the "
            "Wi-Fi name and password. If you can't access the app account, a factory reset restores the "
            "default password printed on the bottom label.",
            f"In the {APP}, Network > Wi-Fi Settings lets you see and change both the network name and "
            "password. Without app access, a factory reset brings back the default password from the bottom "
            "label.",
        ),
        (
            "Customer {name} needs to connect a new smart TV.",
            "The previous owner set up the router.",
        ),
    ),
    Fact(
        "web_admin",
        (
            "Can I manage {mine} without the app?",
            "Is there a web interface for the Nimbus X2?",
            "How do I log in to the router from a computer?",
            "What's the router's admin address?",
            "I don't have a smartphone, can I still configure the router?",
        ),
        (
            f"A web interface is available at {F['admin_url']} from any device on your network; log in "
            "with your Aerolith account. Initial setup and some features, like Shield settings, still "
            f"require the {APP}.",
            f"Open {F['admin_url']} in a browser on a connected device and sign in with your Aerolith "
            f"account to manage most settings. The {APP} is still needed for first-time setup and Shield "
            "features.",
        ),
        (
            "Customer {name} uses a Linux desktop.",
            "Office IT admin wants to set up port forwarding.",
        ),
    ),
    # ----------------------------------------------------------- app & security
    Fact(
        "app_platforms",
        (
            "Which phones does the Aerolith Home app support?",
            "Is the app available for Android?",
            "Does the Aerolith app work on an iPad?",
            "What are the app requirements for {product}?",
            "My phone is old, will the app run on it?",
        ),
        (
            f"The {APP} is free and runs on iOS and iPadOS 15 or later and Android 10 or later. You can "
            "download it from the App Store or Google Play.",
            f"You need iOS/iPadOS 15+ or Android 10+ to use the free {APP}, available on the App Store and "
            "Google Play.",
        ),
        (
            "Customer {name} manages the network from their {phone}.",
            "Family shares one tablet for managing the network.",
        ),
    ),
    Fact(
        "account_security",
        (
            "Can I turn on two-factor authentication for my Aerolith account?",
            "How do I secure my router admin account?",
            "Can I share router access with my partner?",
            "How do I add another admin to the app?",
        ),
        (
            f"You can turn on two-factor authentication in the {APP} under Account > Security. To share "
            "access, go to Account > Household and invite another person as an admin.",
            f"Two-factor authentication is available under Account > Security in the {APP}, and you can "
            "invite household members as admins from Account > Household.",
        ),
        (
            "Customer {name} wants their partner to manage the parental controls too.",
            "Small office with two managers.",
        ),
    ),
    Fact(
        "privacy",
        (
            "Does Aerolith collect my browsing history?",
            "What data does {product} send to Aerolith?",
            "Do you sell customer data?",
            "How do I turn off diagnostics sharing?",
            "Is my browsing private with the Nimbus X2?",
        ),
        (
            "Aerolith Networks does not sell customer data and does not store your browsing history. The "
            f"router sends anonymous diagnostics to improve reliability, which you can turn off in the {APP} "
            "under Settings > Privacy.",
            "We never sell your data and don't keep browsing history. Anonymous diagnostic data is shared "
            f"by default and can be switched off in Settings > Privacy in the {APP}.",
        ),
        (
            "Customer {name} works with confidential client files from home.",
            "Privacy-conscious household.",
        ),
    ),
    # -------------------------------------------------------------- features
    Fact(
        "parental_controls",
        (
            "Does {product} have parental controls?",
            "How do I set up parental controls on the Nimbus X2?",
            "Can I schedule internet downtime for my kids?",
            "Can I block websites for my children's devices?",
            "Are parental controls free?",
            "How do I limit screen time with the router?",
        ),
        (
            f"Parental controls are built in: in the {APP}, go to Family > Profiles, create a profile for "
            "each child, assign their devices and set downtime schedules, which is free. Content filtering "
            "by category requires Shield Plus or Shield Pro.",
            f"Parental controls live under Family > Profiles in the {APP}: group each child's devices into a "
            "profile and add bedtime or homework schedules at no cost. Website and category filtering is "
            "part of Shield Plus and Shield Pro.",
        ),
        (
            "Customer {name} has {kids} kids with tablets and a game console.",
            "The kids are staying up late gaming.",
            "Teenager has a laptop and a phone.",
        ),
    ),
    Fact(
        "pause_internet",
        (
            "Can I pause the internet for one device?",
            "How do I pause Wi-Fi for my kids at dinner time?",
            "Is there a way to cut off the internet on a single profile?",
            "How do I block a device from my network?",
        ),
        (
            f"In the {APP}, open Family, pick a profile or device and tap Pause to cut its internet "
            "instantly; tap Resume to restore it. To block a device entirely, open it under Devices and "
            "choose Block.",
            f"Tap Pause on any profile or device under Family in the {APP} and it goes offline right away "
            "until you tap Resume. Unknown devices can be removed permanently with Devices > Block.",
        ),
        (
            "Customer {name} has {kids} kids.",
            "There's an unknown device on the network.",
        ),
    ),
    Fact(
        "guest_network",
        (
            "How do I set up a guest network on {mine}?",
            "Can visitors use my Wi-Fi without seeing my other devices?",
            "Does the Nimbus X2 have guest Wi-Fi?",
            "Can I make a temporary Wi-Fi for guests?",
            "How do I share Wi-Fi with guests using a QR code?",
        ),
        (
            f"Turn on Guest Wi-Fi in the {APP} under Network > Guest Wi-Fi. Guests are isolated from your "
            "own devices, you can set the network to expire after 1 hour up to 7 days, and the app can "
            "share it as a QR code.",
            f"Go to Network > Guest Wi-Fi in the {APP} to create a separate, isolated network for visitors. "
            "You can choose an expiry from 1 hour to 7 days and share access with a QR code.",
        ),
        (
            "Customer {name} is hosting a party this weekend.",
            "Small office with clients waiting in the lobby.",
            "Holiday rental property with frequent guests.",
        ),
    ),
    Fact(
        "vpn",
        (
            "Does {product} have a built-in VPN?",
            "Can I connect to my home network remotely?",
            "Does the Nimbus X2 support WireGuard?",
            "How do I set up a VPN server on the router?",
            "What's the difference between the VPN server and the Aerolith VPN?",
        ),
        (
            "The router includes a free WireGuard VPN server for reaching your home network remotely; turn "
            f"it on in the {APP} under Advanced > VPN Server. The Aerolith VPN for private browsing on up to "
            "5 devices is a separate feature included with Shield Pro.",
            f"A free WireGuard VPN server is built in (Advanced > VPN Server in the {APP}) so you can "
            "securely access your home network from anywhere. Shield Pro additionally includes the Aerolith "
            "VPN service for up to 5 devices.",
        ),
        (
            "Customer {name} travels for work and wants to reach a home NAS.",
            "Remote worker who uses public Wi-Fi a lot.",
        ),
    ),
    Fact(
        "port_forwarding",
        (
            "How do I set up port forwarding on {mine}?",
            "Can I open ports for my game server?",
            "Does the Nimbus X2 support UPnP?",
            "Where are the advanced network settings?",
        ),
        (
            f"Add port forwarding rules in the {APP} under Advanced > Port Forwarding, or at "
            f"{F['admin_url']}. UPnP is on by default and can be turned off in the same Advanced menu.",
            f"Port forwarding is under Advanced > Port Forwarding in the {APP} or the web interface at "
            f"{F['admin_url']}. UPnP is enabled by default and can be disabled in Advanced settings.",
        ),
        (
            "Customer {name} runs a home game server.",
            "Setting up a security camera recorder.",
        ),
    ),
)


# --------------------------------------------------------------- wording variants

_NAMES: tuple[str, ...] = (
    "Priya",
    "Marcus",
    "Elena",
    "Tomás",
    "Aisha",
    "Kenji",
    "Sofia",
    "Daniel",
    "Fatima",
    "Liam",
    "Chloé",
    "Oluwaseun",
    "Hannah",
    "Mateo",
    "Ingrid",
    "Raj",
    "Grace",
    "Yusuf",
    "Mei",
    "Noah",
    "Zara",
    "Lukas",
    "Amara",
    "Ethan",
    "Leila",
    "Diego",
    "Nora",
    "Samir",
    "Freya",
    "Jonah",
    "Ana",
    "Kwame",
    "Isabel",
    "Viktor",
    "Layla",
    "Owen",
    "Sakura",
    "Emeka",
    "Clara",
    "Arjun",
)
_CITIES: tuple[str, ...] = (
    "Toronto",
    "Denver",
    "Vancouver",
    "Austin",
    "Montreal",
    "Seattle",
    "Chicago",
    "Halifax",
    "Phoenix",
    "Boston",
    "Calgary",
    "Atlanta",
    "Portland",
    "Ottawa",
    "Minneapolis",
)
_HOMES: tuple[str, ...] = (
    "apartment",
    "townhouse",
    "two-storey house",
    "bungalow",
    "home office",
    "condo",
    "farmhouse",
    "small office",
    "loft",
)


def _with_article(noun: str) -> str:
    """Prefix ``noun`` with the matching indefinite article."""
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


_ISPS: tuple[str, ...] = ("fiber", "cable", "DSL", "gigabit fiber", "fixed wireless")
_PACKS: tuple[str, ...] = ("single unit", "2-pack", "3-pack")
_PHONES: tuple[str, ...] = (
    "Pixel 6",
    "iPhone 12",
    "Galaxy S21",
    "iPhone SE",
    "Moto G Power",
    "iPad Air",
    "OnePlus 9",
)
# ``{product}`` names the product neutrally; ``{mine}`` is used where the customer already owns one.
_PRODUCT_REFS: tuple[str, ...] = (
    "the Nimbus Router X2",
    "the Nimbus X2",
    "the X2",
    "the Aerolith Nimbus X2",
    "the Nimbus X2 mesh router",
)
_MINE_REFS: tuple[str, ...] = ("my Nimbus Router X2", "my Nimbus X2", "my router", "my X2", "the router")
_OPENERS: tuple[str, ...] = (
    "Hi!",
    "Hello.",
    "Hi there!",
    "Hey!",
    "Good morning.",
    "Good afternoon.",
    "Quick question.",
    "Hoping you can help.",
    "Hi, this is {name}.",
    "Hello, {name} here.",
    "Hi, it's {name}.",
    "Sorry to bother you.",
    "Hi Aerolith team.",
    "Hi support team!",
)
_CLOSERS: tuple[str, ...] = (
    "Thanks!",
    "Thank you.",
    "Thanks in advance.",
    "Appreciate it.",
    "Thanks for your help!",
    "Cheers.",
)
# Account-level situations that fit any question without changing the answer.
_GENERIC_CONTEXTS: tuple[str, ...] = (
    "Customer: {name}. Order {order}.",
    "Customer {name} from {city}, owns a {pack}.",
    "Order {order}; main unit serial {serial}.",
    "Customer has a {pack} in {a_home} and uses the app on their {phone}.",
    "Returning customer {name}, {isp} internet, {count} connected devices.",
    "Live chat. Customer {name}, serial {serial}.",
    "Customer {name} is setting things up for a parent in {city}.",
)


def _serial(rng: random.Random) -> str:
    """Return a fake but well-formed product serial number (``NX2-XXXX-NNNN``)."""
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "NX2-" + "".join(rng.choice(letters) for _ in range(4)) + f"-{rng.randrange(10000):04d}"


def _slots(rng: random.Random) -> dict[str, str]:
    """Draw one set of placeholder values for templates and contexts."""
    speed = rng.choice((300, 500, 940, 1000, 1200, 2000))
    home = rng.choice(_HOMES)
    return {
        "product": rng.choice(_PRODUCT_REFS),
        "mine": rng.choice(_MINE_REFS),
        "name": rng.choice(_NAMES),
        "city": rng.choice(_CITIES),
        "home": home,
        "a_home": _with_article(home),
        "isp": rng.choice(_ISPS),
        "pack": rng.choice(_PACKS),
        "phone": rng.choice(_PHONES),
        "order": f"AER-{rng.randrange(1_000_000, 10_000_000)}",
        "serial": _serial(rng),
        "size": f"{rng.randrange(6, 60) * 100:,}",
        "months": str(rng.randrange(2, 23)),
        "days": str(rng.randrange(2, 28)),
        "hours": str(rng.randrange(1, 12)),
        "minutes": str(rng.choice((5, 10, 15, 20, 30, 45))),
        "count": str(rng.randrange(12, 90)),
        "kids": rng.choice(("two", "three", "four")),
        "speed": str(speed),
        "low": str(speed // rng.choice((3, 4, 5))),
        "floors": rng.choice(("two", "three")),
        "clock": rng.choice(("7 AM", "9:30 AM", "noon", "3 PM", "6:45 PM", "10 PM")),
    }


def _capitalize(text: str) -> str:
    """Upper-case the first character of ``text`` leaving the rest unchanged."""
    return text[:1].upper() + text[1:]


def _make_row(fact: Fact, rng: random.Random) -> dict[str, str]:
    """Build one row for ``fact`` with randomly chosen wording, context and answer paraphrase."""
    slots = _slots(rng)
    body = _capitalize(rng.choice(fact.questions).format(**slots))
    parts = [body]
    if rng.random() < 0.45:
        parts.insert(0, rng.choice(_OPENERS).format(**slots))
    if rng.random() < 0.35:
        parts.append(rng.choice(_CLOSERS))
    context = ""
    if rng.random() < INPUT_SHARE:
        pool = fact.contexts if fact.contexts and rng.random() < 0.6 else _GENERIC_CONTEXTS
        context = _capitalize(rng.choice(pool).format(**slots))
    return {"instruction": " ".join(parts), "input": context, "output": rng.choice(fact.answers)}


def _row_stream(seed: int) -> Iterator[dict[str, str]]:
    """Yield an endless, duplicate-free stream of rows; facts are cycled in shuffled rounds.

    Raises:
        RuntimeError: If no new (instruction, input) pair can be found for a fact.
    """
    rng = random.Random(seed)
    seen: set[tuple[str, str]] = set()
    order = list(range(len(FACTS)))
    while True:
        rng.shuffle(order)
        for index in order:
            for _ in range(200):
                row = _make_row(FACTS[index], rng)
                key = (row["instruction"], row["input"])
                if key not in seen:
                    seen.add(key)
                    yield row
                    break
            else:
                raise RuntimeError(f"variant space exhausted for fact {FACTS[index].key!r}")


def generate_rows(n: int, seed: int = 0, start: int = 0) -> list[dict[str, str]]:
    """Generate ``n`` deterministic demo FAQ rows.

    Rows are taken from one duplicate-free stream per ``seed``, so ``start`` selects a later, disjoint
    batch of the same kind: ``generate_rows(300, s, 0) + generate_rows(300, s, 300)`` equals
    ``generate_rows(600, s, 0)`` and no (instruction, input) pair repeats across the stream.

    Args:
        n: Number of rows to return (>= 0).
        seed: Seed of the ``random.Random`` stream.
        start: Offset into the stream; rows before it are skipped.

    Returns:
        List of dicts with keys ``instruction``, ``input`` and ``output`` (in that order).

    Raises:
        ValueError: If ``n`` or ``start`` is negative.
    """
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be >= 0, got n={n}, start={start}")
    return list(itertools.islice(_row_stream(seed), start, start + n))


def write_jsonl(rows: Iterable[dict[str, str]], path: str | os.PathLike[str]) -> None:
    """Write rows as UTF-8 JSON lines with keys in the order instruction, input, output.

    Args:
        rows: Rows as produced by :func:`generate_rows`.
        path: Destination file; parent directories are created if missing.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            record = {key: row.get(key, "") for key in FIELDS}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def corpus_text(rows: Iterable[dict[str, str]]) -> Iterator[str]:
    """Yield the plain texts of each row (instruction, input, output) for tokenizer training.

    Empty ``input`` strings are skipped.

    Args:
        rows: Rows with ``instruction``, ``input`` and ``output`` keys.

    Yields:
        The non-empty text fields, row by row in field order.
    """
    for row in rows:
        for key in FIELDS:
            text = row.get(key, "")
            if text:
                yield text


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: generate demo rows and write them as JSONL.

    Args:
        argv: Argument list (defaults to ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=f"Generate the {PRODUCT} demo FAQ dataset as JSONL.")
    parser.add_argument("--out", required=True, help="output .jsonl path")
    parser.add_argument("--rows", type=int, default=400, help="number of rows (default 400)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--start", type=int, default=0, help="offset into the row stream (default 0)")
    args = parser.parse_args(argv)
    if args.rows < 0 or args.start < 0:
        parser.error("--rows and --start must be >= 0")
    rows = generate_rows(args.rows, seed=args.seed, start=args.start)
    write_jsonl(rows, args.out)
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
