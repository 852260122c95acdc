"""Generated training sentences for the PII token tagger: organisations and places in context.

Organisations and places are rare in the development PII sentences (a few dozen of each), so the
tagger saw too few to learn them. This module writes many more from templates and word lists made
up for sigroute (no dataset text, no entity taken from a dataset): chat messages, e-mails,
support tickets, forms and address blocks that name companies, universities, hospitals,
agencies, charities, banks, cities, regions, countries, rivers and neighbourhoods, plus hard
negatives — capitalised words that are not personal data (weekdays, months, products, job
titles, headings, user handles, sentence starts).

Sentences are marked like `signals.pii_tagger_examples` (``[[value|TYPE]]``). `generated()`
is deterministic (a seeded `random.Random`), so a retrained head sees the same sentences. Like the
hand-written ones, they go to the training split only; they are never scored.
"""

from __future__ import annotations

import random

SEED = 1905

# -- organisations -----------------------------------------------------------------------------
# well-known ones, and made-up ones built from a stem and a kind
KNOWN_ORGANIZATIONS = (
    "Microsoft", "Siemens", "Deutsche Bank", "Toyota", "Nestlé", "Unilever", "Oxfam", "UNICEF",
    "the Red Cross", "Barclays", "HSBC", "Santander", "ING", "Volkswagen", "Samsung", "IKEA",
    "Accenture", "Deloitte", "KPMG", "PwC", "Goldman Sachs", "Morgan Stanley", "Pfizer", "Novartis",
    "Roche", "Bayer", "Airbus", "Boeing", "Ericsson", "Nokia", "Philips", "Heineken", "Carlsberg",
    "Maersk", "Lufthansa", "KLM", "Ryanair", "Vodafone", "Telefónica", "Orange", "Shell", "BP",
    "Stanford University", "Harvard University", "the University of Toronto", "Imperial College London",
    "ETH Zurich", "the Sorbonne", "Mayo Clinic", "Johns Hopkins Hospital", "Cleveland Clinic",
    "Médecins Sans Frontières", "Greenpeace", "Amnesty International", "the World Bank",
    "the European Central Bank", "the IRS", "HMRC", "the FBI", "Interpol", "NASA", "the BBC",
    "Reuters", "Bloomberg", "Salesforce", "Oracle", "Infosys", "Tata Consultancy Services", "Wipro",
    "Rabobank", "Nordea", "Allianz", "AXA", "Zurich Insurance", "Kaiser Permanente", "Walmart",
    "Carrefour", "Tesco", "Aldi", "Costco", "FedEx", "DHL", "UPS", "Canon", "Sony", "Bosch",
)
ORGANIZATION_STEMS = (
    "Harborview", "Northwind", "Bluefield", "Crestline", "Silverbrook", "Ironwood", "Maplecroft",
    "Redstone", "Oakhurst", "Windmere", "Eastgate", "Brightwater", "Stonebridge", "Fairhaven",
    "Kestrel", "Pinnacle", "Solace", "Vantor", "Quorra", "Zenlith", "Altamira", "Corvane", "Helix",
    "Lumora", "Novatek", "Orbis", "Praxen", "Tessaro", "Veridian", "Aldergrove", "Blackthorn",
    "Copperline", "Driftwood", "Evergreen", "Foxglove", "Granite Peak", "Highmoor", "Juniper",
    "Larkspur", "Meridian", "Nettlefield", "Oakridge", "Pemberton", "Quayside", "Rosewood",
    "Saltmarsh", "Thornbury", "Upland", "Valecrest", "Westbrook", "Yarrow", "Azurite", "Bexley",
    "Calder", "Dunmore", "Elmstead", "Farrow", "Glenwood", "Hartwell", "Ivybridge", "Kinloch",
)
ORGANIZATION_KINDS = (
    "Logistics", "Analytics", "Capital", "Holdings", "Group", "Ltd", "Inc.", "LLC", "GmbH", "AG",
    "S.A.", "B.V.", "Technologies", "Systems", "Software", "Consulting", "Partners", "Pharmaceuticals",
    "Biotech", "Energy", "Foods", "Motors", "Media", "Labs", "Insurance", "Credit Union", "Savings Bank",
    "Bank", "Hospital", "Medical Center", "Clinic", "Foundation", "Trust", "Institute", "Academy",
    "College", "Airlines", "Freight", "Realty", "Construction", "Telecom", "Robotics", "Security",
)
ORGANIZATION_PATTERNS = (
    "{stem} {kind}", "{stem} {kind}", "{stem} {kind}", "{stem}", "{stem} & {surname}",
    "{surname}, {surname2} and {surname3}", "{surname} and Sons", "{surname}-{surname2}",
    "University of {city}", "{city} General Hospital", "{city} City Council", "Bank of {city}",
    "{city} Institute of Technology", "the {stem} Society", "{surname} {kind}", "{stem}{suffix}",
    "Ministry of {ministry}", "Department of {ministry}", "{city} Chamber of Commerce",
)
NAME_SUFFIXES = ("ly", "io", "ify", "ex", "ora", "sys", "hub", "works", "soft", "tech")
MINISTRIES = ("Health", "Finance", "Education", "Transport", "Labour", "Justice", "Agriculture", "Defence")

# -- people (for mixed sentences) ----------------------------------------------------------------
FIRST_NAMES = (
    "Anna", "Bongani", "Carlos", "Dagny", "Emeka", "Farah", "Gustavo", "Hiroshi", "Ines", "Jakob",
    "Kavya", "Lars", "Mariam", "Nikolai", "Odette", "Pavel", "Quentin", "Rosa", "Sipho", "Thandiwe",
    "Ulrich", "Valentina", "Wen", "Ximena", "Yara", "Zoltan", "Aleksi", "Brigitte", "Cormac", "Divya",
)
SURNAMES = (
    "Abernathy", "Bergström", "Castillo", "Dlamini", "Eriksen", "Fitzgerald", "Gonzaga", "Hakimi",
    "Iversen", "Jankowski", "Kowalczyk", "Lindgren", "Moreau", "Nakamura", "Oyelaran", "Petrakis",
    "Quinlan", "Rasmussen", "Santoro", "Takahashi", "Underwood", "Varga", "Whitfield", "Yilmaz",
    "Zimmermann", "Holt", "Pryce", "Marsh", "Donnelly", "Okonkwo", "Haddad", "Ferreira",
)

# -- places ------------------------------------------------------------------------------------
CITIES = (
    "Lisbon", "Porto", "Seville", "Valencia", "Marseille", "Toulouse", "Lille", "Antwerp", "Ghent",
    "Rotterdam", "Eindhoven", "Hamburg", "Leipzig", "Stuttgart", "Graz", "Salzburg", "Basel",
    "Lausanne", "Turin", "Bologna", "Naples", "Palermo", "Krakow", "Gdansk", "Wroclaw", "Brno",
    "Bratislava", "Debrecen", "Cluj-Napoca", "Varna", "Thessaloniki", "Izmir", "Tallinn", "Tartu",
    "Riga", "Vilnius", "Kaunas", "Turku", "Tampere", "Oulu", "Bergen", "Trondheim", "Stavanger",
    "Aarhus", "Odense", "Malmö", "Uppsala", "Gothenburg", "Reykjavik", "Cork", "Galway", "Leeds",
    "Bristol", "Glasgow", "Cardiff", "Belfast", "Denver", "Portland", "Austin", "Omaha", "Tucson",
    "Pittsburgh", "Halifax", "Winnipeg", "Calgary", "Quebec City", "Monterrey", "Puebla", "Medellín",
    "Cali", "Quito", "Lima", "Arequipa", "Valparaíso", "Rosario", "Córdoba", "Curitiba", "Recife",
    "Porto Alegre", "Accra", "Kumasi", "Lagos", "Ibadan", "Mombasa", "Kampala", "Kigali", "Durban",
    "Pretoria", "Bloemfontein", "Windhoek", "Casablanca", "Tunis", "Alexandria", "Amman", "Beirut",
    "Tbilisi", "Yerevan", "Almaty", "Tashkent", "Lahore", "Karachi", "Pune", "Chennai", "Hyderabad",
    "Kochi", "Colombo", "Dhaka", "Chiang Mai", "Da Nang", "Cebu", "Surabaya", "Penang", "Busan",
    "Daegu", "Sapporo", "Fukuoka", "Kaohsiung", "Chengdu", "Wuhan", "Perth", "Adelaide", "Brisbane",
    "Hobart", "Christchurch", "Wellington", "San Sebastián", "Santa Cruz", "New Orleans", "St. Louis",
)
REGIONS = (
    "Bavaria", "Catalonia", "Tuscany", "Provence", "Brittany", "Andalusia", "Flanders", "Wallonia",
    "Scotland", "Wales", "Cornwall", "Yorkshire", "Lapland", "Jutland", "Silesia", "Transylvania",
    "Ontario", "British Columbia", "Nova Scotia", "Manitoba", "Texas", "Oregon", "Vermont", "Nevada",
    "Queensland", "Tasmania", "Patagonia", "Kerala", "Punjab", "Gauteng", "Western Cape", "Hokkaido",
    "Sicily", "Sardinia", "the Algarve", "the Basque Country", "Normandy", "Saxony", "Styria",
)
COUNTRIES = (
    "Portugal", "Spain", "France", "Belgium", "the Netherlands", "Germany", "Austria", "Switzerland",
    "Italy", "Poland", "Czechia", "Slovakia", "Hungary", "Romania", "Bulgaria", "Greece", "Turkey",
    "Estonia", "Latvia", "Lithuania", "Finland", "Norway", "Denmark", "Sweden", "Iceland", "Ireland",
    "the United Kingdom", "Canada", "the United States", "Mexico", "Colombia", "Ecuador", "Peru",
    "Chile", "Argentina", "Brazil", "Ghana", "Nigeria", "Kenya", "Uganda", "Rwanda", "South Africa",
    "Namibia", "Morocco", "Tunisia", "Egypt", "Jordan", "Lebanon", "Georgia", "Armenia", "Kazakhstan",
    "Pakistan", "India", "Sri Lanka", "Bangladesh", "Thailand", "Vietnam", "the Philippines",
    "Indonesia", "Malaysia", "South Korea", "Japan", "Taiwan", "China", "Australia", "New Zealand",
    "Cyprus", "Malta", "Luxembourg", "Slovenia", "Croatia", "Serbia", "Albania", "Ukraine",
)
RIVERS = ("the Danube", "the Rhine", "the Loire", "the Elbe", "the Thames", "the Shannon", "the Douro",
          "the Vistula", "the Mekong", "the Zambezi", "the Mississippi", "the Yukon", "the Murray")
NEIGHBOURHOODS = ("Kreuzberg", "Montmartre", "Trastevere", "Vesterbro", "Södermalm", "Brooklyn",
                  "Shoreditch", "Gràcia", "Alfama", "Jordaan", "Kallio", "Palermo Soho", "Shibuya",
                  "Camden", "Leith", "Ostend", "Notting Hill", "Harlem", "Bandra", "Kadıköy")
STREETS = ("Lindenweg", "Harbour Road", "Birch Lane", "Rua das Flores", "Calle Mayor", "Kirkegata",
           "Station Street", "Mill Road", "Rue Victor Hugo", "Via Roma", "Elm Avenue", "Storgatan",
           "Kingsway", "Bakery Lane", "Parkstraat", "Ulica Długa", "Cedar Court", "Hillside Drive")

# -- hard negatives: capitalised words that are not personal data -------------------------------
NOT_ENTITIES = (
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "January", "March",
    "August", "October", "December", "Excel", "PowerPoint", "Kubernetes", "Docker", "PostgreSQL",
    "PlayStation", "Kindle", "Bluetooth", "Wi-Fi", "JavaScript", "Rust", "Linux", "Doctor",
    "Professor", "Manager", "Director", "Engineer", "Technician", "Laboratory", "Design", "Marketing",
    "Finance", "Support", "Invoice", "Receipt", "Premium", "Gold", "Platinum", "Express", "Standard",
    "Checkout", "Dashboard", "Settings", "Profile", "Account", "Order", "Shipping", "Returns", "Billing",
    "Staff", "Research", "Laboratory", "Operations", "Procurement", "Compliance", "Legal", "Warehouse",
)
JOB_TITLES = ("Laboratory technician", "Senior Accountant", "Staff Nurse", "Head of Operations",
              "Software Engineer", "Sales Manager", "Research Assistant", "Procurement Officer",
              "Marketing Director", "Customer Success Lead", "Chief Financial Officer", "Data Analyst",
              "office manager", "Legal Counsel", "Warehouse Supervisor", "Product Designer")
HANDLE_WORDS = ("Blue", "Quiet", "Tech", "Sunny", "Pixel", "Green", "Night", "Trail", "Coffee", "Retro",
                "Maple", "Daily", "Kettle", "Slow", "Velvet", "Cloudy", "Happy", "Lazy", "Urban", "Wild",
                "Moth", "Guru", "Bakes", "Pilot", "Gardener", "Owl", "Runner", "Gamer", "Wanderer", "Crumb",
                "Notes", "Turtle", "Scribbles", "Investor", "Song", "Atlas", "Fox", "Knitting", "Chef", "Rider")
HANDLES = ("BlueHarborFan", "QuietMoth42", "TechGuru", "SunnyBakes", "PixelPilot", "GreenThumbGardener",
           "NightOwlCoder", "TrailRunner88", "CoffeeAndCode", "RetroGamerX", "MapleSyrupLover", "DailyWanderer",
           "KettleAndCrumb", "SlowTravelNotes", "BikeShedBuilder", "VelvetTurtle", "CloudyMorningTea")


def _org(rng: random.Random) -> str:
    if rng.random() < 0.25:
        return rng.choice(KNOWN_ORGANIZATIONS)
    surnames = rng.sample(SURNAMES, 3)
    return rng.choice(ORGANIZATION_PATTERNS).format(
        stem=rng.choice(ORGANIZATION_STEMS), kind=rng.choice(ORGANIZATION_KINDS), surname=surnames[0],
        surname2=surnames[1], surname3=surnames[2], city=rng.choice(CITIES), suffix=rng.choice(NAME_SUFFIXES),
        ministry=rng.choice(MINISTRIES))


def _place(rng: random.Random) -> str:
    pool = rng.choices((CITIES, REGIONS, COUNTRIES, RIVERS, NEIGHBOURHOODS), weights=(6, 2, 3, 1, 1))[0]
    return rng.choice(pool)


def _person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)}"


def _mark(value: str, kind: str) -> str:
    """``[[value|KIND]]``, with a leading "the " kept outside the mark."""
    if value.startswith("the "):
        return f"the [[{value[4:]}|{kind}]]"
    return f"[[{value}|{kind}]]"


ORGANIZATION_TEMPLATES = (
    "I have been working at {org} since 2019.",
    "{org} charged my card twice for the same order.",
    "Ticket 4471: customer from {org} cannot log in to the portal.",
    "Subject: partnership proposal from {org}",
    "Dear {org} support team, my refund has not arrived yet.",
    "Employer: {org}\nPosition: analyst",
    "Our contract with {org} ends in June, can you draft a renewal email?",
    "{person} joined {org} as head of sales last month.",
    "Can you compare the benefits at {org} and {org2}?",
    "I got a rejection letter from {org} today.",
    "Write a thank-you note to the team at {org}.",
    "My mortgage is with {org} and the rate went up.",
    "The invoice was issued by {org}, not by us.",
    "She studied chemistry at {org} before moving abroad.",
    "hey, do you know if {org} is hiring interns?",
    "Please cancel my subscription, I am switching to {org}.",
    "{org} has acquired {org2} for an undisclosed sum.",
    "I was treated at {org} after the accident.",
    "We received a donation from {org} for the school trip.",
    "Company name: {org}",
    "Summarize this complaint against {org} in two sentences.",
    "My manager at {org} wants the report by noon.",
    "According to {org}, the shipment left the warehouse yesterday.",
    "Translate this letter from {org} into Spanish.",
    "Is {org} a good place to work for a junior developer?",
    "Reference: letter of employment, {org}, HR department",
    "the recruiter from {org} called me again",
    "{person}, procurement lead, {org}",
    "I filed a claim with {org} but nobody answered.",
    "We are a supplier to {org} and {org2}.",
)
LOCATION_TEMPLATES = (
    "I live in {place} with my two kids.",
    "Ship the order to our warehouse in {city}, {country}.",
    "City: {city}\nCountry: {country}",
    "I was born in {city} but grew up in {region}.",
    "Book me a flight from {city} to {city2} next Tuesday.",
    "What is the best time of year to visit {place}?",
    "Our {city} office will be closed on Friday.",
    "hi, I'm moving from {city} to {country} next month, what documents do I need?",
    "The package is stuck at the depot in {city}.",
    "We spent our honeymoon in {region}.",
    "Location: {city}, {region}",
    "My grandmother still lives in a village near {city}.",
    "Flooding along {river} closed the road to {city}.",
    "Find me a flat in {neighbourhood}, close to the metro.",
    "The conference moved from {city} to {city2}.",
    "Can you recommend restaurants in {neighbourhood}?",
    "I need a visa to work in {country}.",
    "He was transferred to the branch in {city} last year.",
    "Delivery address: warehouse 4, {city}, {country}",
    "Our team is split between {city} and {city2}.",
    "The patient travelled to {country} in March.",
    "Place of birth: {city}, {country}",
    "Weather in {city} tomorrow?",
    "We are driving through {region} on our way to {city}.",
    "my sister moved to {place} and loves it",
    "The hotel in {city} overcharged us.",
    "Nationality: {country}\nResidence: {city}",
    "Is it safe to swim in {river} near {city}?",
    "I commute from {neighbourhood} to the city centre every day.",
    "They opened a factory outside {city}, {region}.",
)
MIXED_TEMPLATES = (
    "{person} from {org} in {city} asked for a quote.",
    "Hello, this is {person} calling from {org}'s {city} office.",
    "{org} is moving its headquarters from {city} to {city2}.",
    "Send the documents to {person} at {org}, {city}.",
    "I interned at {org} in {country} for six months.",
    "Name: {person}\nEmployer: {org}\nCity: {city}",
    "{person}\n{number} {street}\n{cityup}\n{country} {postcode}",
    "{person}\n{street} {number}\n{postcode} {city}\n{country}",
    "{org}\n{number} {street}\n{city}, {country}",
    "Attn: {person}, {org}, {number} {street}, {city}",
    # e-mail signatures: a job title is not an organisation
    "{person}\n{title}\n{org}",
    "Best regards,\n{person}\n{title}, {org}",
    "Kind regards, {person} ({title}, {org})",
    "{person} | {title} | {org} | {city}",
    # an address written on one line is one address, its town and country included
    "Please send the replacement to {inline_address}.",
    "Our new office is at {inline_address}, second floor.",
    "Can you check why my parcel to {inline_address} came back?",
    "{org} is located at {inline_address}",
    "Billing address: {inline_address}",
)
# people named the ways organisations are not: a surname alone, a hyphenated first name, a
# first name alone (so that a lone surname does not read as a company)
PERSON_TEMPLATES = (
    "Mr. {surname} will call you back this afternoon.",
    "Please ask Ms. {surname} to sign the form.",
    "{hyphenated_full} confirmed the booking.",
    "Thanks {first}, I got the files.",
    "Talk to {surname} in accounting about the refund.",
    "Signed: {hyphenated}",
    "Dr. {surname} reviewed the scan on {weekday}.",
    "From: {first} {surname}\nTo: support",
    "{surname} and {surname2} are both out sick today.",
    "I shared the doc with {first} and {hyphenated}.",
)
NEGATIVE_TEMPLATES = (
    "See you on {word}, the meeting is in the small room.",
    "{word} is not working after the update.",
    "How do I export a chart from {word}?",
    "The {word} plan includes free returns.",
    "Please open the {word} page and click save.",
    "{word} team, please review the attached proposal.",
    "Is the {word} tier worth the extra cost?",
    "My username is {handle}, can you reset it?",
    "Posted by {handle}: great tips, thanks!",
    "Ask the {word} about the results.",
    "Next {word} we start the new sprint.",
    "{word} settings are under the gear icon.",
    "Write a short poem about autumn leaves.",
    "Why does my sourdough not rise in winter?",
    "Explain the difference between a loan and a lease.",
    "What are good questions to ask in a job interview?",
    "List three tips for a better night's sleep.",
    "Can You Help Me Format This Table Properly?",
    "Great, Thanks For The Quick Reply!",
    "The Annual Report is due at the end of the quarter.",
    "Follow {handle} for more recipes like this one.",
    "{handle} left a five-star review on the app.",
    "The {word} and {word2} teams meet every {weekday}.",
    "Login: {handle}\nPlan: {word}",
    "@{handle} thanks for the tip!",
    "User {handle} reported a bug in the {word} page.",
    "I forgot the password for my account {handle}.",
    "Comment from {handle}: does this work on {word}?",
)


def _fill(template: str, rng: random.Random) -> str:
    city, city2 = rng.sample(CITIES, 2)
    org, org2 = _org(rng), _org(rng)
    values = {
        "org": _mark(org, "ORGANIZATION"), "org2": _mark(org2, "ORGANIZATION"),
        "person": _mark(_person(rng), "PERSON"), "city": _mark(city, "LOCATION"),
        "city2": _mark(city2, "LOCATION"), "cityup": _mark(rng.choice(CITIES).upper(), "LOCATION"),
        "country": _mark(rng.choice(COUNTRIES), "LOCATION"), "region": _mark(rng.choice(REGIONS), "LOCATION"),
        "river": _mark(rng.choice(RIVERS), "LOCATION"), "neighbourhood": _mark(rng.choice(NEIGHBOURHOODS), "LOCATION"),
        "place": _mark(_place(rng), "LOCATION"),
        "street": None, "number": None, "postcode": str(rng.randint(10000, 99999)),
        "title": rng.choice(JOB_TITLES), "word": rng.choice(NOT_ENTITIES), "word2": rng.choice(NOT_ENTITIES),
        "handle": rng.choice(HANDLES) if rng.random() < 0.5 else "".join(rng.sample(HANDLE_WORDS, rng.choice((2, 3)))),
        "weekday": rng.choice(NOT_ENTITIES[:7]),
        "first": _mark(rng.choice(FIRST_NAMES), "PERSON"),
        "surname": _mark(rng.choice(SURNAMES), "PERSON"), "surname2": _mark(rng.choice(SURNAMES), "PERSON"),
        "hyphenated": _mark("-".join(rng.sample(FIRST_NAMES, 2)), "PERSON"),
        "hyphenated_full": _mark("-".join(rng.sample(FIRST_NAMES, 2)) + " " + rng.choice(SURNAMES), "PERSON"),
        "inline_address": _mark(f"{rng.randint(1, 240)} {rng.choice(STREETS)}, {rng.choice(CITIES)}, "
                                f"{rng.choice(COUNTRIES)}", "STREET_ADDRESS"),
    }
    if "{street}" in template:  # an address block: the street and its number are one address
        street, number = rng.choice(STREETS), str(rng.randint(1, 240))
        if "{number} {street}" in template:
            template = template.replace("{number} {street}", _mark(f"{number} {street}", "STREET_ADDRESS"))
        else:
            template = template.replace("{street} {number}", _mark(f"{street} {number}", "STREET_ADDRESS"))
        values["postcode"] = _mark(values["postcode"], "STREET_ADDRESS")
    sentence = template.format(**values)
    # sentence-initial "the [[X|T]]" -> "The [[X|T]]"
    if sentence.startswith("the [["):
        sentence = "T" + sentence[1:]
    return sentence


def generated(per_template: int = 5, seed: int = SEED) -> list[str]:
    """The marked sentences: `per_template` fills of every template (organisation, place, mixed,
    person), four of every negative one; about one in eight is written all in lower case, as people type
    in chat."""
    rng = random.Random(seed)
    out: list[str] = []
    for templates, count in ((ORGANIZATION_TEMPLATES, per_template), (LOCATION_TEMPLATES, per_template),
                             (MIXED_TEMPLATES, per_template), (PERSON_TEMPLATES, per_template), (NEGATIVE_TEMPLATES, 4)):
        for template in templates:
            for _ in range(count):
                sentence = _fill(template, rng)
                if rng.random() < 0.125:
                    sentence = _lower_outside_marks(sentence)
                out.append(sentence)
    return out


def _lower_outside_marks(marked: str) -> str:
    """Lower-case a marked sentence, keeping the ``|TYPE`` tags intact."""
    parts = marked.split("|")
    return "|".join([parts[0].lower()] + [p[:p.index("]]")] + p[p.index("]]"):].lower() if "]]" in p else p.lower()
                                           for p in parts[1:]])
