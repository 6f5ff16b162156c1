"""The page's words, French first, English second.

Invariant: every key of ``fr`` exists in ``en`` (a test checks it); a
missing key shows the key itself rather than failing the page.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

LANGUAGES = ("fr", "en")

MESSAGES: dict[str, dict[str, str]] = {
    "fr": {
        "title": "Relais magasin",
        "nav.overview": "Vue d'ensemble",
        "nav.journal": "Journal",
        "nav.outbox": "Boîte d'envoi",
        "nav.dead": "Rejets",
        "nav.actions": "Actions",
        "nav.audit": "Journal d'audit",
        "nav.logout": "Se déconnecter",
        "login.title": "Connexion",
        "login.user": "Utilisateur",
        "login.password": "Mot de passe",
        "login.submit": "Se connecter",
        "login.bad": "Identifiant ou mot de passe incorrect.",
        "login.blocked": "Trop d'essais. Réessayez dans quelques minutes.",
        "setup.title": "Première mise en service",
        "setup.intro": "Saisissez le code affiché sur la console du boîtier"
        " (journalctl -u appliance-webui), puis choisissez un mot de passe"
        " d'au moins 12 caractères.",
        "setup.code": "Code de mise en service",
        "setup.confirm": "Confirmer le mot de passe",
        "setup.submit": "Enregistrer",
        "setup.bad_code": "Code de mise en service incorrect.",
        "setup.bad_password": "Mots de passe différents ou trop courts"
        " (12 caractères minimum).",
        "setup.done": "Compte créé. Notez ces jetons : ils ne seront plus affichés.",
        "setup.api_token": "Jeton API (lecture et actions)",
        "setup.metrics_token": "Jeton métriques (lecture seule)",
        "setup.continue": "Continuer vers la connexion",
        "ov.legs": "Étapes du relais",
        "ov.leg": "Étape",
        "ov.state": "État",
        "ov.heartbeat": "Dernier signe de vie",
        "ov.count": "Total",
        "ov.rate": "Débit (/s)",
        "ov.lag": "Retard",
        "ov.lag_entries": "Entrées entre le journal et la confirmation",
        "ov.lag_s": "Âge du plus ancien message non confirmé (s)",
        "ov.oldest": "Plus ancien message non confirmé",
        "ov.dead": "Rejets en attente",
        "ov.alarms": "Alarmes",
        "ov.no_alarm": "Aucune alarme : les données circulent.",
        "ov.none": "aucun",
        "state.running": "en marche",
        "state.stalled": "bloquée",
        "state.stopped": "arrêtée",
        "state.paused": "en pause",
        "state.missing": "jamais démarrée",
        "state.data_gap": "trou de données",
        "alarm.data_gap": "Trou de données : des entrées du journal IBM i ont"
        " disparu avant d'être lues. À faire : appelez le support central ; une"
        " resynchronisation complète du magasin est nécessaire.",
        "alarm.leg_stalled": "L'étape {detail} ne donne plus signe de vie."
        " À faire : vérifiez le boîtier (systemctl status appliance-{detail});"
        " systemd la redémarre seule en quelques minutes.",
        "alarm.leg_stopped": "L'étape {detail} est arrêtée. À faire :"
        " systemctl start appliance.target, puis surveillez cette page.",
        "alarm.leg_missing": "L'étape {detail} n'a jamais démarré sur ce"
        " boîtier. À faire : vérifiez l'installation.",
        "alarm.leg_paused": "L'étape {detail} est en pause. À faire : reprenez-la"
        " depuis la page Actions quand l'intervention est finie.",
        "alarm.outbox_growing": "La boîte d'envoi grossit ({detail} messages non"
        " confirmés). À faire : vérifiez la liaison réseau vers le hub central.",
        "alarm.dead_letters_growing": "Les rejets augmentent ({detail}). À faire :"
        " ouvrez la page Rejets et prévenez le support.",
        "alarm.dead_letters": "{detail} rejet(s) en attente. À faire : ouvrez la"
        " page Rejets pour relancer ou écarter.",
        "journal.bookmark": "Signet (dernière entrée lue)",
        "journal.head": "Tête du journal",
        "journal.unread": "Entrées non lues",
        "journal.receivers": "Récepteurs vus",
        "journal.receiver": "Récepteur",
        "journal.first": "Première séquence",
        "journal.last": "Dernière séquence",
        "journal.entries": "Entrées",
        "outbox.lanes": "Par file",
        "outbox.lane": "File",
        "outbox.chart": "Messages confirmés par minute (dernière heure)",
        "dead.list": "Rejets",
        "dead.stage": "Étape",
        "dead.table": "Table",
        "dead.position": "Position",
        "dead.reason": "Motif",
        "dead.state": "État",
        "dead.detail": "Détail du rejet",
        "dead.field": "Champ",
        "dead.expected": "Attendu",
        "dead.bytes": "Octets (hexadécimal)",
        "dead.decoded": "Champs décodés",
        "dead.retry": "Relancer",
        "dead.discard": "Écarter",
        "dead.none": "Aucun rejet.",
        "act.resend": "Renvoyer une table ou une période",
        "act.resend_help": "Les messages déjà confirmés sont renvoyés avec leur"
        " version d'origine : le hub ne réapplique que ce qui lui manque.",
        "act.table": "Table",
        "act.all_tables": "toutes",
        "act.since": "Depuis (AAAA-MM-JJ HH:MM, UTC, facultatif)",
        "act.until": "Jusqu'à (facultatif)",
        "act.submit_resend": "Renvoyer",
        "act.pause": "Mettre en pause",
        "act.resume": "Reprendre",
        "act.legs": "Pause et reprise des étapes",
        "act.queued": "Demande enregistrée (commande {id}) ; l'étape l'exécute"
        " dans quelques secondes. Suivez-la dans le journal d'audit.",
        "act.bad": "Demande refusée : {detail}",
        "act.rewind": "Revenir en arrière dans le journal",
        "act.rewind_help": "Le mineur relira le journal depuis cette séquence du"
        " récepteur courant.",
        "act.sequence": "Séquence",
        "act.rewind_confirm": "Confirmer le retour en arrière",
        "act.rewind_states": "Seront relues et renvoyées les entrées {start} à"
        " {end} du récepteur {receiver} ({count} entrées). Les données relues"
        " repassent dans tout le relais ; le hub central applique chaque ligne"
        " dans l'ordre du journal, et retrouve l'état actuel une fois la relecture"
        " terminée. Pendant la relecture, des valeurs plus anciennes peuvent"
        " apparaître un instant.",
        "act.rewind_submit": "Oui, relire ces entrées",
        "act.cancel": "Annuler",
        "audit.when": "Quand",
        "audit.who": "Qui",
        "audit.what": "Quoi",
        "audit.detail": "Détail",
        "audit.outcome": "Résultat",
        "lang.switch": "English",
        "error.csrf": "Formulaire expiré ou invalide : rechargez la page.",
    },
    "en": {
        "title": "Store relay",
        "nav.overview": "Overview",
        "nav.journal": "Journal",
        "nav.outbox": "Outbox",
        "nav.dead": "Dead letters",
        "nav.actions": "Actions",
        "nav.audit": "Audit log",
        "nav.logout": "Log out",
        "login.title": "Log in",
        "login.user": "User",
        "login.password": "Password",
        "login.submit": "Log in",
        "login.bad": "Wrong user or password.",
        "login.blocked": "Too many attempts. Try again in a few minutes.",
        "setup.title": "First start",
        "setup.intro": "Type the code shown on the box's console"
        " (journalctl -u appliance-webui), then choose a password of at least"
        " 12 characters.",
        "setup.code": "Setup code",
        "setup.confirm": "Confirm the password",
        "setup.submit": "Save",
        "setup.bad_code": "Wrong setup code.",
        "setup.bad_password": "Passwords differ or are too short (12 at least).",
        "setup.done": "Account created. Write these tokens down: never shown again.",
        "setup.api_token": "API token (read and actions)",
        "setup.metrics_token": "Metrics token (read only)",
        "setup.continue": "Go on to log in",
        "ov.legs": "Relay legs",
        "ov.leg": "Leg",
        "ov.state": "State",
        "ov.heartbeat": "Last heartbeat",
        "ov.count": "Total",
        "ov.rate": "Rate (/s)",
        "ov.lag": "Lag",
        "ov.lag_entries": "Entries between the journal and confirmation",
        "ov.lag_s": "Age of the oldest unconfirmed message (s)",
        "ov.oldest": "Oldest unconfirmed message",
        "ov.dead": "Dead letters waiting",
        "ov.alarms": "Alarms",
        "ov.no_alarm": "No alarm: data is flowing.",
        "ov.none": "none",
        "state.running": "running",
        "state.stalled": "stalled",
        "state.stopped": "stopped",
        "state.paused": "paused",
        "state.missing": "never started",
        "state.data_gap": "data gap",
        "alarm.data_gap": "Data gap: IBM i journal entries vanished before they"
        " were read. To do: call central support; the store needs a full resync.",
        "alarm.leg_stalled": "Leg {detail} shows no sign of life. To do: check"
        " the box (systemctl status appliance-{detail}); systemd restarts it.",
        "alarm.leg_stopped": "Leg {detail} is stopped. To do: systemctl start"
        " appliance.target, then watch this page.",
        "alarm.leg_missing": "Leg {detail} never started on this box. To do:"
        " check the installation.",
        "alarm.leg_paused": "Leg {detail} is paused. To do: resume it from the"
        " Actions page once the work is done.",
        "alarm.outbox_growing": "The outbox is growing ({detail} unconfirmed)."
        " To do: check the network link to the central hub.",
        "alarm.dead_letters_growing": "Dead letters are growing ({detail}). To"
        " do: open the Dead letters page and tell support.",
        "alarm.dead_letters": "{detail} dead letter(s) waiting. To do: open the"
        " Dead letters page to retry or discard.",
        "journal.bookmark": "Bookmark (last entry read)",
        "journal.head": "Journal head",
        "journal.unread": "Unread entries",
        "journal.receivers": "Receivers seen",
        "journal.receiver": "Receiver",
        "journal.first": "First sequence",
        "journal.last": "Last sequence",
        "journal.entries": "Entries",
        "outbox.lanes": "Per lane",
        "outbox.lane": "Lane",
        "outbox.chart": "Confirmed messages per minute (last hour)",
        "dead.list": "Dead letters",
        "dead.stage": "Stage",
        "dead.table": "Table",
        "dead.position": "Position",
        "dead.reason": "Reason",
        "dead.state": "State",
        "dead.detail": "Dead letter",
        "dead.field": "Field",
        "dead.expected": "Expected",
        "dead.bytes": "Bytes (hex)",
        "dead.decoded": "Decoded fields",
        "dead.retry": "Retry",
        "dead.discard": "Discard",
        "dead.none": "No dead letter.",
        "act.resend": "Re-send a table or a time range",
        "act.resend_help": "Confirmed messages are sent again with their"
        " original version: the hub applies only what it is missing.",
        "act.table": "Table",
        "act.all_tables": "all",
        "act.since": "Since (YYYY-MM-DD HH:MM, UTC, optional)",
        "act.until": "Until (optional)",
        "act.submit_resend": "Re-send",
        "act.pause": "Pause",
        "act.resume": "Resume",
        "act.legs": "Pause and resume legs",
        "act.queued": "Request saved (command {id}); the leg carries it out in a"
        " few seconds. Follow it in the audit log.",
        "act.bad": "Request refused: {detail}",
        "act.rewind": "Rewind the journal",
        "act.rewind_help": "The miner reads the journal again from this sequence"
        " of the current receiver.",
        "act.sequence": "Sequence",
        "act.rewind_confirm": "Confirm the rewind",
        "act.rewind_states": "Entries {start} to {end} of receiver {receiver}"
        " ({count} entries) will be read and sent again. They go through the"
        " whole relay once more; the central hub applies each row in journal"
        " order and is back to today's state when the replay ends. Older values"
        " may show for a moment during the replay.",
        "act.rewind_submit": "Yes, read these entries again",
        "act.cancel": "Cancel",
        "audit.when": "When",
        "audit.who": "Who",
        "audit.what": "What",
        "audit.detail": "Detail",
        "audit.outcome": "Outcome",
        "lang.switch": "Français",
        "error.csrf": "Form expired or invalid: reload the page.",
    },
}


def translate(language: str, key: str, **values: object) -> str:
    """The text of ``key`` in ``language`` (French if unknown)."""
    table = MESSAGES.get(language, MESSAGES["fr"])
    text = table.get(key) or MESSAGES["fr"].get(key) or key
    return text.format(**values) if values else text
