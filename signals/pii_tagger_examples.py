"""Hand-written training sentences for the PII token tagger (`signals.pii_tagger`).

Written for this project (no dataset text): entities are marked ``[[value|TYPE]]`` with TYPE one
of PERSON, LOCATION, STREET_ADDRESS, ORGANIZATION. Sentences without marks are hard negatives:
capitalized words that are not personal data (a fruit, a month, a verb at the start of a
question, a product, a programming language, a country used as a topic...). They all go to the
training split; the held-out numbers come from the development set only.
"""

from __future__ import annotations

import re

EXAMPLES: tuple[str, ...] = (
    # people
    "Please forward the contract to [[Marguerite Okafor|PERSON]] before Friday.",
    "My neighbour [[Tomasz Wielgosz|PERSON]] asked me to water his plants.",
    "Can you draft an apology email to [[Priya Raghunathan|PERSON]] for the late delivery?",
    "[[Henrik Sjöberg|PERSON]] will present the quarterly numbers tomorrow.",
    "I spoke with Dr. [[Amara Nwosu|PERSON]] about my test results.",
    "The account belongs to [[Luis Fernando Carvajal|PERSON]], not to me.",
    "Write a birthday poem for my daughter [[Elodie|PERSON]].",
    "Hi, this is [[Kenji Watanabe|PERSON]] from the night shift.",
    "Ms. [[Beatrix Holloway|PERSON]] has requested a refund for order 5531.",
    "Tell [[Dmitri|PERSON]] that the meeting moved to three o'clock.",
    "Summarize the complaint filed by [[Yusuf Demir|PERSON]] and [[Hanna Lindqvist|PERSON]].",
    "[[Olufemi Adeyemi|PERSON]]'s passport expires next month.",
    "Our new hire, [[Chloé Marchetti|PERSON]], starts on the design team.",
    "Reply to [[Grace O'Donnell|PERSON]] and say the invoice was paid.",
    "my brother [[sam whitaker|PERSON]] needs a reference letter",
    # places
    "I am flying from [[Nairobi|LOCATION]] to [[Copenhagen|LOCATION]] next week.",
    "We are opening a second office in [[Guadalajara|LOCATION]].",
    "What is the weather usually like in [[Tromsø|LOCATION]] in March?",
    "She grew up in [[Lyon|LOCATION]], [[France|LOCATION]], and moved to [[Montreal|LOCATION]] later.",
    "The conference will be held in [[Kuala Lumpur|LOCATION]] this year.",
    "He commutes every day between [[Haarlem|LOCATION]] and [[Utrecht|LOCATION]].",
    "My parents still live in [[Ohio|LOCATION]].",
    "Ship the samples to our lab in [[Bangalore|LOCATION]].",
    # street addresses
    "Send the package to [[1187 Juniper Hollow Road, Apt 5C|STREET_ADDRESS]].",
    "Our warehouse is at [[77 Harbourside Drive|STREET_ADDRESS]] in [[Halifax|LOCATION]].",
    "I moved to [[2409 West Maple Avenue, Suite 310|STREET_ADDRESS]] last spring.",
    "The invoice address is [[Kastanienallee 14|STREET_ADDRESS]], [[Berlin|LOCATION]].",
    "Please update my address to [[5 Rue des Lilas|STREET_ADDRESS]].",
    "Pick me up at [[930 Old Quarry Lane|STREET_ADDRESS]] at seven.",
    "The flat at [[18B Castlegate Terrace|STREET_ADDRESS]] is available from June.",
    "Deliver to [[4410 Pinecrest Blvd Unit 12|STREET_ADDRESS]], thanks.",
    "Mail the forms to [[PO Box 8812|STREET_ADDRESS]].",
    # organisations
    "I have worked at [[Harrowgate Logistics|ORGANIZATION]] for six years.",
    "The grant was awarded by the [[Fennimore Foundation|ORGANIZATION]].",
    "Compare the return policies of [[Brightwell Outfitters|ORGANIZATION]] and [[Lumen Home Goods|ORGANIZATION]].",
    "She is a partner at [[Castellano & Reyes LLP|ORGANIZATION]].",
    "My claim with [[Northvale Mutual Insurance|ORGANIZATION]] was rejected.",
    "[[Quillon Biotech|ORGANIZATION]] announced layoffs yesterday.",
    "He volunteers for the [[Riverside Food Bank|ORGANIZATION]] on weekends.",
    "Draft a cover letter for a job at [[Solvane Energy Inc.|ORGANIZATION]].",
    # mixed
    "[[Ingrid Halvorsen|PERSON]] from [[Tidewater Analytics|ORGANIZATION]] lives at [[63 Beacon Street|STREET_ADDRESS]], [[Boston|LOCATION]].",
    "Contact [[Rafael Ortega|PERSON]] at the [[Madrid|LOCATION]] branch of [[Corvid Systems|ORGANIZATION]].",
    "[[Mei Lin Tan|PERSON]] rents a studio at [[221 Orchard Road|STREET_ADDRESS]] in [[Singapore|LOCATION]].",
    "Book a table for [[Aisha Bello|PERSON]] near [[12 Wharf Street|STREET_ADDRESS]].",
    # hard negatives: capitalized words that are not personal data
    "Apple pie recipe with cinnamon and brown sugar, please.",
    "May I ask how long it takes to boil an egg?",
    "Jordan the country has a long history of trade routes.",
    "Explain how Python decorators work with an example.",
    "What is the difference between Java and JavaScript?",
    "Can you summarize the plot of Pride and Prejudice?",
    "Will the Federal Reserve raise interest rates again?",
    "Write a haiku about the Moon and the Sea.",
    "How do I reset my password on Windows?",
    "Is Mercury closer to the Sun than Venus?",
    "Grace periods on loans usually last a few weeks.",
    "Summer is the best time to visit national parks.",
    "Hope you are doing well, I have a question about SQL joins.",
    "Turkey takes about four hours to roast.",
    "Amazon rainforest deforestation rates in the last decade",
    "The Great Depression changed banking regulation.",
    "Bill me monthly instead of yearly.",
    "Mark the task as done and close the ticket.",
    "Please Review The Attached Document Before Monday.",
    "Does Excel have a function for weighted averages?",
    "The Renaissance began in the fourteenth century.",
    "Victoria sponge needs equal weights of butter, sugar and flour.",
    "Use the Main Street template for the landing page design.",
    "Newton's second law relates force, mass and acceleration.",
    "Christmas falls on a Thursday this year.",
    "I read about Mars missions in a magazine.",
    "Rose petals can be used to make tea.",
    "Will it rain on Tuesday?",
    "Explain the Pythagorean theorem simply.",
    "What does HTTP status 404 mean?",
)

_MARK = re.compile(r"\[\[([^\]|]+)\|([A-Z_]+)\]\]")


def parse(marked: str) -> tuple[str, list[tuple[str, int, int]]]:
    """Plain text and its (type, start, end) spans from a ``[[value|TYPE]]``-marked sentence."""
    text, spans, pos = [], [], 0
    length = 0
    for m in _MARK.finditer(marked):
        before = marked[pos:m.start()]
        text.append(before)
        length += len(before)
        value = m.group(1)
        spans.append((m.group(2), length, length + len(value)))
        text.append(value)
        length += len(value)
        pos = m.end()
    text.append(marked[pos:])
    return "".join(text), spans


def examples() -> list[dict]:
    """The sentences as rows shaped like the benchmark's (`text`, `spans`): the hand-written ones
    above and the template-generated ones of `signals.pii_tagger_templates`."""
    from sigroute.signals.pii_tagger_templates import generated

    return [dict(zip(("text", "spans"), parse(s))) for s in EXAMPLES + tuple(generated())]
