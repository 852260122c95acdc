"""presidio's pattern recognizers as plain data and functions, so that PII detection never imports presidio.

`signals.pii` builds its detector on presidio-analyzer's predefined *pattern* recognizers: their
regular expressions, scores, context words and checksum validators. presidio-analyzer's package
imports spaCy (and, when they are installed, transformers and PyTorch) as soon as any part of it is
imported — seconds and hundreds of megabytes for a gateway replica that uses none of them. So the
parts the detector uses are kept here, copied from presidio-analyzer (MIT License, Copyright (c)
Microsoft Corporation), version `PRESIDIO_VERSION`:

* `RECOGNIZERS`: for each recognizer, its entity, regex flags, context words and patterns;
* `URL_CONTEXT`, `URL_BASE_REGEX`: what the URL rules take from `UrlRecognizer`;
* `IBAN_FORMATS`: the per-country IBAN formats (`iban_patterns.regex_per_country`);
* the validators (`VALIDATE`, `INVALIDATE`): ABA routing and DEA checksums, NHS mod 11, Bitcoin
  base58check and bech32/bech32m, MAC and US SSN invalidation rules — the same logic as the
  recognizers' `validate_result` / `invalidate_result`.

`snapshot_from_presidio()` reads the same data from an installed presidio-analyzer (importing it);
the tests compare it with this copy and run both sets of validators on the same values, so an
upgrade of presidio that changes a pattern is noticed. To refresh, print the snapshot and paste it.
"""

from __future__ import annotations

import re
from hashlib import sha256
from typing import Any, Callable, NamedTuple

PRESIDIO_VERSION = "2.2.366"
#: recognizer class name -> entity, regex flags (re.I | re.M | re.S), context words, (name, regex, score) patterns
RECOGNIZERS: dict[str, dict] = {'AbaRoutingRecognizer': {'entity': 'ABA_ROUTING_NUMBER',
                          'flags': 26,
                          'context': ['aba', 'routing', 'abarouting', 'association', 'bankrouting'],
                          'patterns': [('ABA routing number (weak)', '\\b[0123678]\\d{8}\\b', 0.05),
                                       ('ABA routing number', '\\b[0123678]\\d{3}-\\d{4}-\\d\\b', 0.3)]},
 'CryptoRecognizer': {'entity': 'CRYPTO',
                      'flags': 26,
                      'context': ['wallet', 'btc', 'bitcoin', 'crypto'],
                      'patterns': [('Crypto (Medium)', '(bc1|[13])[a-zA-HJ-NP-Z0-9]{25,59}', 0.5)]},
 'DateRecognizer': {'entity': 'DATE_TIME',
                    'flags': 26,
                    'context': ['date', 'birthday'],
                    'patterns': [('Datetime (yyyy-mm-ddThh:mm[:ss[.f]] with timezone)',
                                  '\\b(?:(\\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\\d|3[01])T[0-2]\\d:[0-5]\\d:[0-5]\\d\\.\\d+([+-][0-2]\\d:[0-5]\\d|Z))|(\\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\\d|3[01])T[0-2]\\d:[0-5]\\d:[0-5]\\d([+-][0-2]\\d:[0-5]\\d|Z))|(\\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\\d|3[01])T[0-2]\\d:[0-5]\\d([+-][0-2]\\d:[0-5]\\d|Z)))\\b',
                                  0.8),
                                 ('mm/dd/yyyy or mm/dd/yy',
                                  '\\b(([1-9]|0[1-9]|1[0-2])/([1-9]|0[1-9]|[1-2][0-9]|3[0-1])/(\\d{4}|\\d{2}))\\b',
                                  0.6),
                                 ('dd/mm/yyyy or dd/mm/yy',
                                  '\\b(([1-9]|0[1-9]|[1-2][0-9]|3[0-1])/([1-9]|0[1-9]|1[0-2])/(\\d{4}|\\d{2}))\\b',
                                  0.6),
                                 ('yyyy/mm/dd',
                                  '\\b(\\d{4}/([1-9]|0[1-9]|1[0-2])/([1-9]|0[1-9]|[1-2][0-9]|3[0-1]))\\b',
                                  0.6),
                                 ('mm-dd-yyyy',
                                  '\\b(([1-9]|0[1-9]|1[0-2])-([1-9]|0[1-9]|[1-2][0-9]|3[0-1])-\\d{4})\\b',
                                  0.6),
                                 ('dd-mm-yyyy',
                                  '\\b(([1-9]|0[1-9]|[1-2][0-9]|3[0-1])-([1-9]|0[1-9]|1[0-2])-\\d{4})\\b',
                                  0.6),
                                 ('yyyy-mm-dd',
                                  '\\b(\\d{4}-([1-9]|0[1-9]|1[0-2])-([1-9]|0[1-9]|[1-2][0-9]|3[0-1]))\\b',
                                  0.6),
                                 ('dd.mm.yyyy or dd.mm.yy',
                                  '\\b(([1-9]|0[1-9]|[1-2][0-9]|3[0-1])\\.([1-9]|0[1-9]|1[0-2])\\.(\\d{4}|\\d{2}))\\b',
                                  0.6),
                                 ('dd-MMM-yyyy or dd-MMM-yy',
                                  '\\b(([1-9]|0[1-9]|[1-2][0-9]|3[0-1])-(JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC)-(\\d{4}|\\d{2}))\\b',
                                  0.6),
                                 ('MMM-yyyy or MMM-yy',
                                  '\\b((JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC)-(\\d{4}|\\d{2}))\\b',
                                  0.6),
                                 ('dd-MMM or dd-MMM',
                                  '\\b(([1-9]|0[1-9]|[1-2][0-9]|3[0-1])-(JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC))\\b',
                                  0.6),
                                 ('mm/yyyy or m/yyyy', '\\b(([1-9]|0[1-9]|1[0-2])/\\d{4})\\b', 0.2),
                                 ('mm/yy or m/yy', '\\b(([1-9]|0[1-9]|1[0-2])/\\d{2})\\b', 0.1)]},
 'EmailRecognizer': {'entity': 'EMAIL_ADDRESS',
                     'flags': 26,
                     'context': ['email'],
                     'patterns': [('Email (Medium)',
                                   "\\b((([!#$%&'*+\\-/=?^_`{|}~\\w])|([!#$%&'*+\\-/=?^_`{|}~\\w][!#$%&'*+\\-/=?^_`{|}~\\.\\w]{0,}[!#$%&'*+\\-/=?^_`{|}~\\w]))[@]\\w+(?:-+\\w+)*(?:\\.\\w+(?:-+\\w+)*)+)\\b",
                                   0.5)]},
 'IpRecognizer': {'entity': 'IP_ADDRESS',
                  'flags': 26,
                  'context': ['ip', 'ipv4', 'ipv6'],
                  'patterns': [('IPv4_mapped',
                                '(?<![\\w:])::(?:ffff(?::0{1,4})?:)?(?:(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)(?:/(?:12[0-8]|1[01]\\d|[1-9]?\\d))?\\b',
                                0.6),
                               ('IPv4_embedded',
                                '(?<![\\w:])(?:(?:[0-9A-Fa-f]{1,4}:){1,5}:(?:[0-9A-Fa-f]{1,4}:){0,4}|(?:[0-9A-Fa-f]{1,4}:){6})(?:(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)(?:/(?:12[0-8]|1[01]\\d|[1-9]?\\d))?\\b',
                                0.6),
                               ('IPv4',
                                '\\b(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\\.(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\\.(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\\.(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)(?:/(?:[0-2]?\\d|3[0-2]))?\\b',
                                0.6),
                               ('IPv6',
                                '(?<![\\w:])(?:(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}|(?:[0-9A-Fa-f]{1,4}:){1,7}:|:(?::[0-9A-Fa-f]{1,4}){1,7}|(?:[0-9A-Fa-f]{1,4}:){1,6}:[0-9A-Fa-f]{1,4}|(?:[0-9A-Fa-f]{1,4}:){1,5}(?::[0-9A-Fa-f]{1,4}){1,2}|(?:[0-9A-Fa-f]{1,4}:){1,4}(?::[0-9A-Fa-f]{1,4}){1,3}|(?:[0-9A-Fa-f]{1,4}:){1,3}(?::[0-9A-Fa-f]{1,4}){1,4}|(?:[0-9A-Fa-f]{1,4}:){1,2}(?::[0-9A-Fa-f]{1,4}){1,5}|[0-9A-Fa-f]{1,4}:(?::[0-9A-Fa-f]{1,4}){1,6}|:(?::[0-9A-Fa-f]{1,4}){1,6})(?:%[0-9a-zA-Z]+)?(?:/(?:12[0-8]|1[01]\\d|[1-9]?\\d))?(?![\\w:]|\\.\\d)',
                                0.6),
                               ('IPv6_unspecified',
                                '(?<![\\w:])::(?:/(?:12[0-8]|1[01]\\d|[1-9]?\\d))?(?![\\w:])',
                                0.1)]},
 'MacAddressRecognizer': {'entity': 'MAC_ADDRESS',
                          'flags': 26,
                          'context': ['mac', 'mac address', 'hardware address', 'physical address', 'ethernet'],
                          'patterns': [('MAC_COLON_OR_HYPHEN',
                                        '\\b[0-9A-Fa-f]{2}([:-])(?:[0-9A-Fa-f]{2}\\1){4}[0-9A-Fa-f]{2}\\b',
                                        0.6),
                                       ('MAC_CISCO_DOT',
                                        '\\b[0-9A-Fa-f]{4}\\.[0-9A-Fa-f]{4}\\.[0-9A-Fa-f]{4}\\b',
                                        0.6)]},
 'MedicalLicenseRecognizer': {'entity': 'MEDICAL_LICENSE',
                              'flags': 26,
                              'context': ['medical', 'certificate', 'DEA'],
                              'patterns': [('USA DEA Certificate Number (weak)',
                                            '[abcdefghjklmprstuxABCDEFGHJKLMPRSTUX]{1}[a-zA-Z]{1}\\d{7}|[abcdefghjklmprstuxABCDEFGHJKLMPRSTUX]{1}9\\d{7}',
                                            0.4)]},
 'NhsRecognizer': {'entity': 'UK_NHS',
                   'flags': 26,
                   'context': ['national health service', 'nhs', 'health services authority', 'health authority'],
                   'patterns': [('NHS (medium)', '\\b([0-9]{3})[- ]?([0-9]{3})[- ]?([0-9]{4})\\b', 0.5)]},
 'UsBankRecognizer': {'entity': 'US_BANK_NUMBER',
                      'flags': 26,
                      'context': ['check', 'account', 'account#', 'acct', 'bank', 'save', 'debit'],
                      'patterns': [('Bank Account (weak)', '\\b[0-9]{8,17}\\b', 0.05)]},
 'UsItinRecognizer': {'entity': 'US_ITIN',
                      'flags': 26,
                      'context': ['individual', 'taxpayer', 'itin', 'tax', 'payer', 'taxid', 'tin'],
                      'patterns': [('Itin (very weak)',
                                    '\\b9\\d{2}[- '
                                    '](5\\d|6[0-5]|7\\d|8[0-8]|9([0-2]|[4-9]))\\d{4}\\b|\\b9\\d{2}(5\\d|6[0-5]|7\\d|8[0-8]|9([0-2]|[4-9]))[- '
                                    ']\\d{4}\\b',
                                    0.05),
                                   ('Itin (weak)',
                                    '\\b9\\d{2}(5\\d|6[0-5]|7\\d|8[0-8]|9([0-2]|[4-9]))\\d{4}\\b',
                                    0.3),
                                   ('Itin (medium)',
                                    '\\b9\\d{2}[- ](5\\d|6[0-5]|7\\d|8[0-8]|9([0-2]|[4-9]))[- ]\\d{4}\\b',
                                    0.5)]},
 'UsLicenseRecognizer': {'entity': 'US_DRIVER_LICENSE',
                         'flags': 26,
                         'context': ['driver',
                                     'license',
                                     'permit',
                                     'lic',
                                     'identification',
                                     'dls',
                                     'cdls',
                                     'lic#',
                                     'driving'],
                         'patterns': [('Driver License - Alphanumeric (weak)',
                                       '\\b([A-Z][0-9]{3,6}|[A-Z][0-9]{5,9}|[A-Z][0-9]{6,8}|[A-Z][0-9]{4,8}|[A-Z][0-9]{9,11}|[A-Z]{1,2}[0-9]{5,6}|H[0-9]{8}|V[0-9]{6}|X[0-9]{8}|A-Z]{2}[0-9]{2,5}|[A-Z]{2}[0-9]{3,7}|[0-9]{2}[A-Z]{3}[0-9]{5,6}|[A-Z][0-9]{13,14}|[A-Z][0-9]{18}|[A-Z][0-9]{6}R|[A-Z][0-9]{9}|[A-Z][0-9]{1,12}|[0-9]{9}[A-Z]|[A-Z]{2}[0-9]{6}[A-Z]|[0-9]{8}[A-Z]{2}|[0-9]{3}[A-Z]{2}[0-9]{4}|[A-Z][0-9][A-Z][0-9][A-Z]|[0-9]{7,8}[A-Z])\\b',
                                       0.3),
                                      ('Driver License - Digits (very weak)',
                                       '\\b([0-9]{6,14}|[0-9]{16})\\b',
                                       0.01)]},
 'UsPassportRecognizer': {'entity': 'US_PASSPORT',
                          'flags': 26,
                          'context': ['us', 'united', 'states', 'passport', 'passport#', 'travel', 'document'],
                          'patterns': [('Passport (very weak)', '(\\b[0-9]{9}\\b)', 0.05),
                                       ('Passport Next Generation (very weak)', '(\\b[A-Z][0-9]{8}\\b)', 0.1)]},
 'UsSsnRecognizer': {'entity': 'US_SSN',
                     'flags': 26,
                     'context': ['social', 'security', 'ssn', 'ssns', 'ssid'],
                     'patterns': [('SSN1 (very weak)', '\\b([0-9]{5})-([0-9]{4})\\b', 0.05),
                                  ('SSN2 (very weak)', '\\b([0-9]{3})-([0-9]{6})\\b', 0.05),
                                  ('SSN3 (very weak)', '\\b(([0-9]{3})-([0-9]{2})-([0-9]{4}))\\b', 0.05),
                                  ('SSN4 (very weak)', '\\b[0-9]{9}\\b', 0.05),
                                  ('SSN5 (medium)', '\\b([0-9]{3})[- .]([0-9]{2})[- .]([0-9]{4})\\b', 0.5)]}}

URL_CONTEXT: tuple[str, ...] = ('url', 'website', 'link')
#: the domain part of presidio's URL patterns (its top-level-domain alternation)
URL_BASE_REGEX = '((www\\d{0,3}[.])?[a-z0-9.\\-]{1,253}[.](?:(?:com)|(?:edu)|(?:gov)|(?:int)|(?:mil)|(?:net)|(?:onl)|(?:org)|(?:pro)|(?:red)|(?:tel)|(?:uno)|(?:xxx)|(?:academy)|(?:accountant)|(?:accountants)|(?:actor)|(?:adult)|(?:africa)|(?:agency)|(?:airforce)|(?:apartments)|(?:app)|(?:archi)|(?:army)|(?:art)|(?:asia)|(?:associates)|(?:attorney)|(?:auction)|(?:audio)|(?:auto)|(?:autos)|(?:baby)|(?:band)|(?:bar)|(?:bargains)|(?:beer)|(?:berlin)|(?:best)|(?:bet)|(?:bid)|(?:bike)|(?:bio)|(?:black)|(?:blackfriday)|(?:blog)|(?:blue)|(?:boats)|(?:bond)|(?:boo)|(?:boston)|(?:bot)|(?:boutique)|(?:build)|(?:builders)|(?:business)|(?:buzz)|(?:cab)|(?:cafe)|(?:cam)|(?:camera)|(?:camp)|(?:capital)|(?:car)|(?:cards)|(?:care)|(?:careers)|(?:cars)|(?:casa)|(?:cash)|(?:casino)|(?:catering)|(?:center)|(?:ceo)|(?:cfd)|(?:charity)|(?:chat)|(?:cheap)|(?:christmas)|(?:church)|(?:city)|(?:claims)|(?:cleaning)|(?:click)|(?:clinic)|(?:clothing)|(?:cloud)|(?:club)|(?:codes)|(?:coffee)|(?:college)|(?:com)|(?:community)|(?:company)|(?:computer)|(?:condos)|(?:construction)|(?:consulting)|(?:contact)|(?:contractors)|(?:cooking)|(?:cool)|(?:coupons)|(?:courses)|(?:credit)|(?:creditcard)|(?:cricket)|(?:cruises)|(?:cyou)|(?:dad)|(?:dance)|(?:date)|(?:dating)|(?:day)|(?:degree)|(?:delivery)|(?:democrat)|(?:dental)|(?:dentist)|(?:desi)|(?:design)|(?:dev)|(?:diamonds)|(?:diet)|(?:digital)|(?:direct)|(?:directory)|(?:discount)|(?:doctor)|(?:dog)|(?:domains)|(?:download)|(?:earth)|(?:eco)|(?:education)|(?:email)|(?:energy)|(?:engineer)|(?:engineering)|(?:enterprises)|(?:equipment)|(?:esq)|(?:estate)|(?:events)|(?:exchange)|(?:expert)|(?:exposed)|(?:express)|(?:fail)|(?:faith)|(?:family)|(?:fans)|(?:farm)|(?:fashion)|(?:feedback)|(?:film)|(?:finance)|(?:financial)|(?:fish)|(?:fishing)|(?:fit)|(?:fitness)|(?:flights)|(?:florist)|(?:flowers)|(?:football)|(?:forsale)|(?:foundation)|(?:fun)|(?:fund)|(?:furniture)|(?:futbol)|(?:fyi)|(?:gallery)|(?:game)|(?:games)|(?:garden)|(?:gay)|(?:gdn)|(?:gifts)|(?:gives)|(?:giving)|(?:glass)|(?:global)|(?:gmbh)|(?:gold)|(?:golf)|(?:graphics)|(?:gratis)|(?:green)|(?:gripe)|(?:group)|(?:guide)|(?:guitars)|(?:guru)|(?:hair)|(?:hamburg)|(?:haus)|(?:health)|(?:healthcare)|(?:help)|(?:hiphop)|(?:hockey)|(?:holdings)|(?:holiday)|(?:homes)|(?:horse)|(?:hospital)|(?:host)|(?:hosting)|(?:house)|(?:how)|(?:icu)|(?:info)|(?:ink)|(?:institute)|(?:insure)|(?:international)|(?:investments)|(?:irish)|(?:jewelry)|(?:jetzt)|(?:juegos)|(?:kaufen)|(?:kids)|(?:kitchen)|(?:kiwi)|(?:krd)|(?:kyoto)|(?:land)|(?:lat)|(?:law)|(?:lawyer)|(?:lease)|(?:legal)|(?:lgbt)|(?:life)|(?:lighting)|(?:limited)|(?:limo)|(?:link)|(?:live)|(?:loan)|(?:loans)|(?:lol)|(?:london)|(?:love)|(?:ltd)|(?:ltda)|(?:luxury)|(?:maison)|(?:management)|(?:market)|(?:marketing)|(?:markets)|(?:mba)|(?:media)|(?:melbourne)|(?:meme)|(?:memorial)|(?:men)|(?:miami)|(?:mobi)|(?:moda)|(?:moe)|(?:mom)|(?:money)|(?:monster)|(?:mortgage)|(?:motorcycles)|(?:mov)|(?:movie)|(?:nagoya)|(?:name)|(?:navy)|(?:network)|(?:new)|(?:news)|(?:ngo)|(?:ninja)|(?:now)|(?:nyc)|(?:observer)|(?:okinawa)|(?:one)|(?:ong)|(?:onl)|(?:online)|(?:organic)|(?:osaka)|(?:page)|(?:paris)|(?:partners)|(?:parts)|(?:party)|(?:pet)|(?:phd)|(?:photo)|(?:photography)|(?:photos)|(?:pics)|(?:pictures)|(?:pink)|(?:pizza)|(?:place)|(?:plumbing)|(?:plus)|(?:poker)|(?:porn)|(?:press)|(?:pro)|(?:productions)|(?:prof)|(?:promo)|(?:properties)|(?:property)|(?:protection)|(?:pub)|(?:quest)|(?:racing)|(?:recipes)|(?:red)|(?:rehab)|(?:reise)|(?:reisen)|(?:rent)|(?:rentals)|(?:repair)|(?:report)|(?:republican)|(?:rest)|(?:restaurant)|(?:review)|(?:reviews)|(?:rip)|(?:rocks)|(?:rodeo)|(?:rsvp)|(?:run)|(?:saarland)|(?:sale)|(?:salon)|(?:sarl)|(?:sbs)|(?:school)|(?:schule)|(?:science)|(?:services)|(?:sex)|(?:sexy)|(?:sh)|(?:shoes)|(?:shop)|(?:shopping)|(?:show)|(?:singles)|(?:site)|(?:skin)|(?:soccer)|(?:social)|(?:software)|(?:solar)|(?:solutions)|(?:soy)|(?:space)|(?:spiegel)|(?:study)|(?:style)|(?:sucks)|(?:supply)|(?:support)|(?:surf)|(?:surgery)|(?:systems)|(?:tax)|(?:taxi)|(?:team)|(?:tech)|(?:technology)|(?:tel)|(?:theater)|(?:tips)|(?:tires)|(?:today)|(?:tools)|(?:top)|(?:tours)|(?:town)|(?:toys)|(?:trade)|(?:training)|(?:tube)|(?:uk)|(?:university)|(?:uno)|(?:vacations)|(?:ventures)|(?:vet)|(?:video)|(?:villas)|(?:vin)|(?:vip)|(?:vision)|(?:vlaanderen)|(?:vodka)|(?:vote)|(?:voting)|(?:voyage)|(?:wales)|(?:wang)|(?:watch)|(?:webcam)|(?:website)|(?:wedding)|(?:wiki)|(?:wine)|(?:work)|(?:works)|(?:world)|(?:wtf)|(?:xyz)|(?:yoga)|(?:yokohama)|(?:you)|(?:zone)|(?:ac)|(?:ad)|(?:ae)|(?:af)|(?:ag)|(?:ai)|(?:al)|(?:am)|(?:an)|(?:ao)|(?:aq)|(?:ar)|(?:as)|(?:at)|(?:au)|(?:aw)|(?:ax)|(?:az)|(?:ba)|(?:bb)|(?:bd)|(?:be)|(?:bf)|(?:bg)|(?:bh)|(?:bi)|(?:bj)|(?:bm)|(?:bn)|(?:bo)|(?:br)|(?:bs)|(?:bt)|(?:bv)|(?:bw)|(?:by)|(?:bz)|(?:ca)|(?:cc)|(?:cd)|(?:cf)|(?:cg)|(?:ch)|(?:ci)|(?:ck)|(?:cl)|(?:cm)|(?:cn)|(?:co)|(?:cr)|(?:cu)|(?:cv)|(?:cw)|(?:cx)|(?:cy)|(?:cz)|(?:de)|(?:dj)|(?:dk)|(?:dm)|(?:do)|(?:dz)|(?:ec)|(?:ee)|(?:eg)|(?:er)|(?:es)|(?:et)|(?:eu)|(?:fi)|(?:fj)|(?:fk)|(?:fm)|(?:fo)|(?:fr)|(?:ga)|(?:gb)|(?:gd)|(?:ge)|(?:gf)|(?:gg)|(?:gh)|(?:gi)|(?:gl)|(?:gm)|(?:gn)|(?:gp)|(?:gq)|(?:gr)|(?:gs)|(?:gt)|(?:gu)|(?:gw)|(?:gy)|(?:hk)|(?:hm)|(?:hn)|(?:hr)|(?:ht)|(?:hu)|(?:id)|(?:ie)|(?:il)|(?:im)|(?:in)|(?:io)|(?:iq)|(?:ir)|(?:is)|(?:it)|(?:je)|(?:jm)|(?:jo)|(?:jp)|(?:ke)|(?:kg)|(?:kh)|(?:ki)|(?:km)|(?:kn)|(?:kp)|(?:kr)|(?:kw)|(?:ky)|(?:kz)|(?:la)|(?:lb)|(?:lc)|(?:li)|(?:lk)|(?:lr)|(?:ls)|(?:lt)|(?:lu)|(?:lv)|(?:ly)|(?:ma)|(?:mc)|(?:md)|(?:me)|(?:mg)|(?:mh)|(?:mk)|(?:ml)|(?:mm)|(?:mn)|(?:mo)|(?:mp)|(?:mq)|(?:mr)|(?:ms)|(?:mt)|(?:mu)|(?:mv)|(?:mw)|(?:mx)|(?:my)|(?:mz)|(?:na)|(?:nc)|(?:ne)|(?:nf)|(?:ng)|(?:ni)|(?:nl)|(?:no)|(?:np)|(?:nr)|(?:nu)|(?:nz)|(?:om)|(?:pa)|(?:pe)|(?:pf)|(?:pg)|(?:ph)|(?:pk)|(?:pl)|(?:pm)|(?:pn)|(?:pr)|(?:ps)|(?:pt)|(?:pw)|(?:py)|(?:qa)|(?:re)|(?:ro)|(?:rs)|(?:ru)|(?:rw)|(?:sa)|(?:sb)|(?:sc)|(?:sd)|(?:se)|(?:sg)|(?:sh)|(?:si)|(?:sj)|(?:sk)|(?:sl)|(?:sm)|(?:sn)|(?:so)|(?:sr)|(?:st)|(?:su)|(?:sv)|(?:sx)|(?:sy)|(?:sz)|(?:tc)|(?:td)|(?:tf)|(?:tg)|(?:th)|(?:tj)|(?:tk)|(?:tl)|(?:tm)|(?:tn)|(?:to)|(?:tp)|(?:tr)|(?:tt)|(?:tv)|(?:tw)|(?:tz)|(?:ua)|(?:ug)|(?:uk)|(?:us)|(?:uy)|(?:uz)|(?:va)|(?:vc)|(?:ve)|(?:vg)|(?:vi)|(?:vn)|(?:vu)|(?:wf)|(?:ws)|(?:ye)|(?:yt)|(?:za)|(?:zm)|(?:zw))(?:/[^\\s()<>\\"\']*)?)'

#: country code -> the IBAN format of that country (presidio's iban_patterns.regex_per_country)
IBAN_FORMATS: dict[str, str] = {'AL': '(AL)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ '
       ']?){4}([a-zA-Z0-9][ ]?){4}',
 'AD': '(AD)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}',
 'AT': '(AT)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}',
 'AZ': '(AZ)[0-9]{2}[ ]?([a-zA-Z0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}',
 'BH': '(BH)[0-9]{2}[ ]?([A-Z][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ '
       ']?){2}',
 'BY': '(BY)[0-9]{2}[ ]?([a-zA-Z0-9][ ]?){4}([0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ '
       ']?){4}([a-zA-Z0-9][ ]?){4}',
 'BE': '(BE)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}',
 'BA': '(BA)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}',
 'BR': '(BR)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){3}[A-Z][ '
       ']?[a-zA-Z0-9][ ]?',
 'BG': '(BG)[0-9]{2}[ ]?([A-Z][ ]?){4}([0-9][ ]?){4}[0-9][ ]?[0-9][ ]?([a-zA-Z0-9][ ]?){2}([a-zA-Z0-9][ '
       ']?){4}([a-zA-Z0-9][ ]?){2}',
 'CR': '(CR)[0-9]{2}[ ]?[0]([0-9][ ]?){3}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){2}',
 'HR': '(HR)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}[0-9][ ]?',
 'CY': '(CY)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ '
       ']?){4}([a-zA-Z0-9][ ]?){4}',
 'CZ': '(CZ)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}',
 'DK': '(DK)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){2}',
 'DO': '(DO)[0-9]{2}[ ]?([A-Z][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}',
 'TL': '(TL)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){3}',
 'EE': '(EE)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}',
 'FO': '(FO)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){2}',
 'FI': '(FI)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){2}',
 'FR': '(FR)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){2}([a-zA-Z0-9][ ]?){2}([a-zA-Z0-9][ '
       ']?){4}([a-zA-Z0-9][ ]?){4}[a-zA-Z0-9][ ]?([0-9][ ]?){2}',
 'GE': '(GE)[0-9]{2}[ ]?([a-zA-Z0-9][ ]?){2}([0-9][ ]?){2}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){2}',
 'DE': '(DE)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){2}',
 'GI': '(GI)[0-9]{2}[ ]?([A-Z][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ '
       ']?){3}',
 'GR': '(GR)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){3}[a-zA-Z0-9][ ]?([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ '
       ']?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){3}',
 'GL': '(GL)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){2}',
 'GT': '(GT)[0-9]{2}[ ]?([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ '
       ']?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}',
 'HU': '(HU)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}',
 'IS': '(IS)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){2}',
 'IE': '(IE)[0-9]{2}[ ]?([a-zA-Z0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){2}',
 'IL': '(IL)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){3}',
 'IT': '(IT)[0-9]{2}[ ]?[A-Z][ ]?([0-9][ ]?){3}([0-9][ ]?){4}([0-9][ ]?){3}[a-zA-Z0-9][ ]?([a-zA-Z0-9][ '
       ']?){3}[a-zA-Z0-9][ ]?([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){3}',
 'JO': '(JO)[0-9]{2}[ ]?([A-Z][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ '
       ']?){2}',
 'KZ': '(KZ)[0-9]{2}[ ]?([0-9][ ]?){3}[a-zA-Z0-9][ ]?([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}',
 'XK': '(XK)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}',
 'KW': '(KW)[0-9]{2}[ ]?([A-Z][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ '
       ']?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){2}',
 'LV': '(LV)[0-9]{2}[ ]?([A-Z][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}[a-zA-Z0-9][ ]?',
 'LB': '(LB)[0-9]{2}[ ]?([0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ '
       ']?){4}([a-zA-Z0-9][ ]?){4}',
 'LI': '(LI)[0-9]{2}[ ]?([0-9][ ]?){4}[0-9][ ]?([a-zA-Z0-9][ ]?){3}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ '
       ']?){4}[a-zA-Z0-9][ ]?',
 'LT': '(LT)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}',
 'LU': '(LU)[0-9]{2}[ ]?([0-9][ ]?){3}[a-zA-Z0-9][ ]?([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}',
 'MT': '(MT)[0-9]{2}[ ]?([A-Z][ ]?){4}([0-9][ ]?){4}[0-9][ ]?([a-zA-Z0-9][ ]?){3}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ '
       ']?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){3}',
 'MR': '(MR)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){3}',
 'MU': '(MU)[0-9]{2}[ ]?([A-Z][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){3}[A-Z][ '
       ']?',
 'MD': '(MD)[0-9]{2}[ ]?([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ '
       ']?){4}([a-zA-Z0-9][ ]?){4}',
 'MC': '(MC)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){2}([a-zA-Z0-9][ ]?){2}([a-zA-Z0-9][ '
       ']?){4}([a-zA-Z0-9][ ]?){4}[a-zA-Z0-9][ ]?([0-9][ ]?){2}',
 'ME': '(ME)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){2}',
 'NL': '(NL)[0-9]{2}[ ]?([A-Z][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){2}',
 'MK': '(MK)[0-9]{2}[ ]?([0-9][ ]?){3}[a-zA-Z0-9][ ]?([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}[a-zA-Z0-9][ ]?([0-9][ '
       ']?){2}',
 'NO': '(NO)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){3}',
 'PK': '(PK)[0-9]{2}[ ]?([a-zA-Z0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}',
 'PS': '(PS)[0-9]{2}[ ]?([a-zA-Z0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}[0-9][ ]?',
 'PL': '(PL)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}',
 'PT': '(PT)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}[0-9][ ]?',
 'QA': '(QA)[0-9]{2}[ ]?([A-Z][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ '
       ']?){4}[a-zA-Z0-9][ ]?',
 'RO': '(RO)[0-9]{2}[ ]?([A-Z][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ '
       ']?){4}',
 'SM': '(SM)[0-9]{2}[ ]?[A-Z][ ]?([0-9][ ]?){3}([0-9][ ]?){4}([0-9][ ]?){3}[a-zA-Z0-9][ ]?([a-zA-Z0-9][ '
       ']?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){3}',
 'SA': '(SA)[0-9]{2}[ ]?([0-9][ ]?){2}([a-zA-Z0-9][ ]?){2}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ '
       ']?){4}([a-zA-Z0-9][ ]?){4}',
 'RS': '(RS)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){2}',
 'SK': '(SK)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}',
 'SI': '(SI)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){3}',
 'ES': '(ES)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}',
 'SE': '(SE)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}',
 'CH': '(CH)[0-9]{2}[ ]?([0-9][ ]?){4}[0-9][ ]?([a-zA-Z0-9][ ]?){3}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ '
       ']?){4}[a-zA-Z0-9][ ]?',
 'TN': '(TN)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}',
 'TR': '(TR)[0-9]{2}[ ]?([0-9][ ]?){4}[0-9][ ]?([a-zA-Z0-9][ ]?){3}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ '
       ']?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){2}',
 'AE': '(AE)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){3}',
 'GB': '(GB)[0-9]{2}[ ]?([A-Z][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){2}',
 'VA': '(VA)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){2}',
 'VG': '(VG)[0-9]{2}[ ]?([a-zA-Z0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}',
 'EG': '(EG)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}[0-9][ '
       ']?',
 'IQ': '(IQ)[0-9]{2}[ ]?([A-Z][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){3}',
 'LY': '(LY)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}[0-9][ ]?',
 'LC': '(LC)[0-9]{2}[ ]?([A-Z][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ '
       ']?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}',
 'SC': '(SC)[0-9]{2}[ ]?([A-Z][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([0-9][ ]?){4}([A-Z][ '
       ']?){3}',
 'UA': '(UA)[0-9]{2}[ ]?([0-9][ ]?){4}([0-9][ ]?){2}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ '
       ']?){4}([a-zA-Z0-9][ ]?){4}([a-zA-Z0-9][ ]?){3}'}


# ------------------------------------------------------------------------------------------------
# validators (presidio's logic; True = valid / invalid as the name says)


def _sanitize(text: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for search, replacement in pairs:
        text = text.replace(search, replacement)
    return text


def aba_routing_valid(value: str) -> bool:
    digits = _sanitize(value, (("-", ""),))
    total = sum(int(digits[i]) * weight for i, weight in enumerate((3, 7, 1, 3, 7, 1, 3, 7, 1)))
    return total % 10 == 0


def medical_license_valid(value: str) -> bool:
    """DEA certificate number: a Luhn-like checksum over the digits after the two letters."""
    digits = [int(d) for d in _sanitize(value, (("-", ""), (" ", "")))[2:]]
    check = digits.pop()
    return (-check + 2 * sum(digits[-1::-2]) + sum(digits[-2::-2])) % 10 == 0


def nhs_valid(value: str) -> bool:
    text = _sanitize(value, (("-", ""), (" ", "")))
    return sum(int(c) * weight for c, weight in zip(text, reversed(range(11)))) % 11 == 0


_BASE58 = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BECH32_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32M_CONST = 0x2BC830A3


def _base58_decode(value: bytes) -> bytes:
    length = len(value)
    value = value.lstrip(_BASE58[0:1])
    n = 0
    for char in value:
        n = n * 58 + _BASE58.index(char)
    return n.to_bytes(length - len(value) + (n.bit_length() + 7) // 8, "big")


def _bech32_polymod(values: list[int]) -> int:
    generator = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            chk ^= generator[i] if ((top >> i) & 1) else 0
    return chk


def _bech32_valid(address: str) -> bool:
    if any(ord(x) < 33 or ord(x) > 126 for x in address) or (
            address.lower() != address and address.upper() != address):
        return False
    address = address.lower()
    pos = address.rfind("1")
    if pos < 1 or pos + 7 > len(address) or len(address) > 90:
        return False
    if not all(x in _BECH32_CHARSET for x in address[pos + 1:]):
        return False
    hrp = address[:pos]
    data = [_BECH32_CHARSET.find(x) for x in address[pos + 1:]]
    expanded = [ord(x) >> 5 for x in hrp] + [0] + [ord(x) & 31 for x in hrp]
    return _bech32_polymod(expanded + data) in (1, _BECH32M_CONST)


def crypto_valid(value: str) -> bool:
    """A Bitcoin address: base58check (P2PKH, P2SH) or bech32/bech32m (segwit)."""
    if value.startswith("1") or value.startswith("3"):
        try:
            raw = _base58_decode(str.encode(value))
        except ValueError:
            return False
        return raw[-4:] == sha256(sha256(raw[:-4]).digest()).digest()[:4]
    if value.startswith("bc1"):
        return _bech32_valid(value)
    return False


def mac_invalid(value: str) -> bool:
    cleaned = re.sub(r"[:\-.]", "", value)
    if re.fullmatch(r"[0-9A-Fa-f]{12}", cleaned) is None:
        return True
    return cleaned.upper() in ("FFFFFFFFFFFF", "000000000000")


def us_ssn_invalid(value: str) -> bool:
    if len({c for c in value if c in ".- "}) > 1:  # mismatched delimiters
        return True
    digits = "".join(c for c in value if c.isdigit())
    if all(digits[0] == c for c in digits):
        return True
    if digits[3:5] == "00" or digits[5:] == "0000":
        return True
    if digits[:3] in ("000", "666"):
        return True
    return digits in ("123456789", "987654320", "078051120")


#: recognizer class name -> its validate_result (True: valid, scores 1.0)
VALIDATE: dict[str, Callable[[str], bool]] = {
    "AbaRoutingRecognizer": aba_routing_valid, "CryptoRecognizer": crypto_valid,
    "MedicalLicenseRecognizer": medical_license_valid, "NhsRecognizer": nhs_valid,
}
#: recognizer class name -> its invalidate_result (True: drop the match)
INVALIDATE: dict[str, Callable[[str], bool]] = {
    "MacAddressRecognizer": mac_invalid, "UsSsnRecognizer": us_ssn_invalid,
}


# ------------------------------------------------------------------------------------------------


class Pattern(NamedTuple):
    name: str
    regex: str
    score: float


class Recognizer(NamedTuple):
    """What the detector reads from one presidio recognizer."""

    name: str
    entity: str
    flags: int
    context: tuple[str, ...]
    patterns: tuple[Pattern, ...]
    validate: Callable[[str], bool] | None
    invalidate: Callable[[str], bool] | None


def recognizer(name: str) -> Recognizer:
    spec = RECOGNIZERS[name]
    return Recognizer(name, spec["entity"], spec["flags"], tuple(spec["context"]),
                      tuple(Pattern(*p) for p in spec["patterns"]), VALIDATE.get(name), INVALIDATE.get(name))


def snapshot_from_presidio() -> dict[str, Any]:
    """The same data read from the installed presidio-analyzer (imports it: slow), plus its
    validators, for comparison with this module's copy."""
    import os

    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    import presidio_analyzer.predefined_recognizers as predefined
    from presidio_analyzer import PatternRecognizer
    from presidio_analyzer.predefined_recognizers.generic.iban_patterns import regex_per_country

    recognizers, validate, invalidate = {}, {}, {}
    for name in RECOGNIZERS:
        rec = getattr(predefined, name)()
        recognizers[name] = {"entity": rec.supported_entities[0], "flags": int(rec.global_regex_flags),
                             "context": list(rec.context or ()),
                             "patterns": [(p.name, p.regex, p.score) for p in rec.patterns]}
        if type(rec).validate_result is not PatternRecognizer.validate_result:
            validate[name] = rec.validate_result
        if type(rec).invalidate_result is not PatternRecognizer.invalidate_result:
            invalidate[name] = rec.invalidate_result
    return {"version": __import__("importlib.metadata").metadata.version("presidio-analyzer"),
            "recognizers": recognizers, "url_context": tuple(predefined.UrlRecognizer.CONTEXT),
            "url_base_regex": predefined.UrlRecognizer.BASE_URL_REGEX, "iban_formats": dict(regex_per_country),
            "validate": validate, "invalidate": invalidate}
