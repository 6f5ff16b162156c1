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
        " disparu avant d'être lues. À faire : avec ibmi.on_data_gap = resend le"
        " gardien compare et répare les tables seul (page Gardien) ; sinon"
        " appelez le support central.",
        "alarm.source_denied": "L'IBM i refuse le profil du relais (mot de passe"
        " ou droits). Le relais réessaie. À faire : vérifiez le mot de passe du"
        " relais (appliance check-config) ; sinon demandez à l'équipe IBM i de"
        " rendre au profil le droit *USE sur le journal et les tables relayées.",
        "alarm.bad_entry": "Une entrée du journal IBM i est inutilisable :"
        " récepteur {receiver}, séquence {sequence} (enregistré jusqu'à"
        " {last_stored}), colonne {field} = {value}, attendu : {expected}. Le"
        " mineur n'enregistre rien de cette fenêtre et la relit ; le relais du"
        " magasin attend. À faire : si l'alarme dure, signalez cette entrée à"
        " l'équipe IBM i (DSPJRN sur ce récepteur) et appelez le support"
        " central ; si elle ne peut pas être corrigée, le support peut vous"
        " demander de la sauter.",
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
        "journal.receivers": "Récepteurs des entrées gardées sur le boîtier",
        "journal.receiver": "Récepteur",
        "journal.first": "Première séquence",
        "journal.last": "Dernière séquence",
        "journal.entries": "Entrées gardées",
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
        "dead.not_parked": "Le rejet {id} n'est plus en attente : rien n'a été"
        " demandé.",
        "dead.no_retry": "Un rejet de l'étape {stage} ne peut pas être relancé :"
        " corrigez la cause, puis écartez-le.",
        "dead.no_retry_control": "Un rejet du gardien ne peut pas être relancé."
        " À faire : écartez-le, puis lancez « Contrôler maintenant » sur sa"
        " table depuis la page Gardien ; le gardien redemandera ce qui manque.",
        "dead.no_action": "L'étape {stage} ne peut pas exécuter cette action.",
        "act.resend": "Renvoyer une table ou une période",
        "act.resend_help": "Les messages déjà confirmés sont renvoyés avec leur"
        " version d'origine : le hub ne réapplique que ce qui lui manque.",
        "act.table": "Table",
        "act.all_tables": "toutes",
        "act.since": "Depuis (AAAA-MM-JJ HH:MM, UTC sauf fuseau écrit"
        " comme +01:00, facultatif)",
        "act.until": "Jusqu'à (facultatif)",
        "act.submit_resend": "Renvoyer",
        "act.pause": "Mettre en pause",
        "act.resume": "Reprendre",
        "act.legs": "Pause et reprise des étapes",
        "act.queued": "Demande enregistrée (commande {id}) ; l'étape l'exécute"
        " dans quelques secondes. Suivez-la dans le journal d'audit.",
        "act.bad": "Demande refusée : {detail}",
        "act.twin": "Déjà demandé : la commande {id}, identique, attend son étape.",
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
        "nav.guardian": "Gardien",
        "nav.account": "Mot de passe",
        "guard.intro": "Le gardien compare chaque table du magasin avec le hub"
        " central et répare les écarts (mode réparer) ou les signale seulement.",
        "guard.not_running": "Le gardien ne tourne pas encore : aucun contrôle"
        " enregistré sur ce boîtier.",
        "guard.last_runs": "Dernier contrôle par table",
        "guard.when": "Début",
        "guard.kind": "Type",
        "guard.mode": "Mode",
        "guard.rows_read": "Lignes lues",
        "guard.changed": "Modifiées pendant la lecture",
        "guard.narrowed": "Écarts (groupes détaillés)",
        "guard.loaded": "Chargées (renvoi)",
        "guard.repaired": "Réparées",
        "guard.deleted": "Supprimées",
        "guard.dropped": "Abandonnées",
        "guard.duration": "Durée (s)",
        "guard.error": "Erreur",
        "guard.run": "Contrôle",
        "guard.no_run": "Aucun contrôle pour l'instant.",
        "guard.no_event": "Aucun événement.",
        "guard.events": "Événements récents",
        "guard.actions": "Contrôler ou renvoyer",
        "guard.check": "Contrôler maintenant",
        "guard.load": "Renvoyer cette table",
        "guard.load_help": "Renvoyer une table relit toute la table sur l'IBM i"
        " et envoie chaque ligne au hub. Pour renvoyer une période, utilisez la"
        " page Actions.",
        "guard.mode_default": "réglage du boîtier",
        "guard.mode_repair": "réparer",
        "guard.mode_log": "signaler seulement",
        "guard.confirm_check": "Confirmer le contrôle",
        "guard.confirm_load": "Confirmer le renvoi de la table",
        "guard.states_check": "Le gardien va comparer la table {table} (mode :"
        " {mode}) avec le hub central. La lecture ménage l'IBM i ; elle peut"
        " durer plusieurs minutes.",
        "guard.states_load": "Le gardien va relire toute la table {table} sur"
        " l'IBM i et envoyer chaque ligne au hub central, qui n'applique que ce"
        " qui lui manque ou qui est plus ancien. Pour une grande table, cela peut"
        " durer longtemps.",
        "guard.submit_check": "Oui, contrôler",
        "guard.submit_load": "Oui, renvoyer la table",
        "alarm.guardian_failed": "Le dernier contrôle du gardien sur la table"
        " {detail} a échoué. À faire : lisez l'erreur sur la page Gardien, puis"
        " relancez le contrôle.",
        "alarm.guardian_differences": "Le gardien a trouvé des écarts sur la table"
        " {detail} (mode signaler seulement : rien n'est réparé). À faire : ouvrez"
        " la page Gardien, renvoyez la table ou prévenez le support.",
        "account.title": "Changer le mot de passe",
        "account.intro": "Les autres sessions de ce compte seront fermées.",
        "account.current": "Mot de passe actuel",
        "account.submit": "Changer",
        "account.changed": "Mot de passe changé ; les autres sessions sont fermées.",
        "account.same": "Le nouveau mot de passe doit différer de l'actuel.",
        "skip.link": "Sauter cette entrée",
        "skip.title": "Confirmer le saut d'une entrée du journal",
        "skip.name_sequence": "l'entrée {sequence} du récepteur {receiver}",
        "skip.name_null": "la ligne sans séquence qui suit l'entrée {after} du"
        " récepteur {receiver}",
        "skip.states_entry": "Le mineur va passer {entry}, qu'il ne peut pas"
        " utiliser : colonne {field} = {value}, attendu : {expected}.",
        "skip.states_effect": "Il relit la fenêtre du journal, enregistre les"
        " autres entrées et met cette ligne entière (toutes ses colonnes) de côté"
        " comme rejet de l'étape miner (page Rejets) : elle n'est pas relayée"
        " vers le hub central. Un contrôle du gardien est demandé pour chaque"
        " table que la ligne touche (toutes les tables relayées si sa table est"
        " inconnue ou si c'est une entrée de contrôle de validation) ; il répare"
        " ce que la ligne aurait changé. Le mineur reprend ensuite la lecture et"
        " l'alarme disparaît.",
        "skip.states_final": "C'est définitif : le mineur poursuit sa lecture"
        " après cette entrée sans y revenir, et son rejet ne peut pas être"
        " relancé.",
        "skip.states_check": "Le mineur vérifie encore avant de sauter : si"
        " l'alarme a changé entre-temps, si la ligne se lit de nouveau entière ou"
        " (ligne sans séquence) si les autres lignes de la fenêtre lui laissent"
        " plus d'une place, rien n'est sauté. Sa réponse s'affiche dans le"
        " journal d'audit.",
        "skip.submit": "Oui, sauter cette entrée",
        "skip.no_alarm": "Aucune alarme d'entrée inutilisable : rien à sauter.",
        "skip.gone": "L'alarme a disparu depuis votre confirmation : rien n'a été"
        " demandé.",
        "skip.changed": "L'alarme nomme maintenant une autre entrée ({named}) que"
        " celle confirmée : rien n'a été demandé. Lisez la nouvelle alarme, puis"
        " recommencez.",
        "skip.changed_fault": "L'entrée ({named}) est maintenant inutilisable pour"
        " une autre raison (colonne {field}) que celle confirmée : rien n'a été"
        " demandé. Lisez la nouvelle alarme, puis recommencez.",
        "skip.cli_only": "Les faits de cette alarme sont incomplets : cette page"
        " ne peut pas dire quelle entrée sauter. Le mineur les réécrit à sa"
        " prochaine lecture ; s'ils restent incomplets, lisez l'entrée par DSPJRN"
        " et sautez-la en ligne de commande sur le boîtier : appliance skip-entry"
        " --receiver LIB/NOM --sequence N (ou --null-after N pour une ligne sans"
        " séquence).",
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
        " were read. To do: with ibmi.on_data_gap = resend the guardian compares"
        " and repairs the tables by itself (Guardian page); else call central"
        " support.",
        "alarm.source_denied": "The IBM i refuses the relay's profile (password"
        " or authority). The relay keeps retrying. To do: check the relay's"
        " password (appliance check-config); else ask the IBM i team to give the"
        " profile *USE on the journal and the relayed tables again.",
        "alarm.bad_entry": "An IBM i journal entry cannot be used: receiver"
        " {receiver}, sequence {sequence} (stored up to {last_stored}), column"
        " {field} = {value}, expected: {expected}. The miner stores nothing of"
        " this window and reads it again; the store's relay waits. To do: if"
        " the alarm lasts, report this entry to the IBM i team (DSPJRN on this"
        " receiver) and call central support; if it cannot be mended, support"
        " may ask you to skip it.",
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
        "journal.receivers": "Receivers of the entries kept on the box",
        "journal.receiver": "Receiver",
        "journal.first": "First sequence",
        "journal.last": "Last sequence",
        "journal.entries": "Entries kept",
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
        "dead.not_parked": "Dead letter {id} is no longer waiting: nothing was"
        " requested.",
        "dead.no_retry": "A dead letter of the {stage} stage cannot be retried:"
        " fix the cause, then discard it.",
        "dead.no_retry_control": "A guardian dead letter cannot be retried. To do:"
        ' discard it, then run "Check now" on its table from the Guardian'
        " page; the guardian asks again for what is missing.",
        "dead.no_action": "The {stage} stage cannot carry out this action.",
        "act.resend": "Re-send a table or a time range",
        "act.resend_help": "Confirmed messages are sent again with their"
        " original version: the hub applies only what it is missing.",
        "act.table": "Table",
        "act.all_tables": "all",
        "act.since": "Since (YYYY-MM-DD HH:MM, UTC unless a zone such as +01:00"
        " is written, optional)",
        "act.until": "Until (optional)",
        "act.submit_resend": "Re-send",
        "act.pause": "Pause",
        "act.resume": "Resume",
        "act.legs": "Pause and resume legs",
        "act.queued": "Request saved (command {id}); the leg carries it out in a"
        " few seconds. Follow it in the audit log.",
        "act.bad": "Request refused: {detail}",
        "act.twin": "Already requested: command {id}, the same, waits for its leg.",
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
        "nav.guardian": "Guardian",
        "nav.account": "Password",
        "guard.intro": "The guardian compares each store table with the central"
        " hub and repairs the differences (repair mode) or only reports them.",
        "guard.not_running": "Guardian not running yet: no run recorded on this box.",
        "guard.last_runs": "Last run per table",
        "guard.when": "Started",
        "guard.kind": "Kind",
        "guard.mode": "Mode",
        "guard.rows_read": "Rows read",
        "guard.changed": "Changed during the read",
        "guard.narrowed": "Mismatches (buckets narrowed)",
        "guard.loaded": "Loaded (re-sent)",
        "guard.repaired": "Repaired",
        "guard.deleted": "Deleted",
        "guard.dropped": "Dropped",
        "guard.duration": "Duration (s)",
        "guard.error": "Error",
        "guard.run": "Run",
        "guard.no_run": "No run yet.",
        "guard.no_event": "No event.",
        "guard.events": "Recent events",
        "guard.actions": "Check or re-send",
        "guard.check": "Check now",
        "guard.load": "Re-send this table",
        "guard.load_help": "Re-sending a table reads the whole table on the IBM i"
        " again and sends every row to the hub. To re-send a time range, use the"
        " Actions page.",
        "guard.mode_default": "box setting",
        "guard.mode_repair": "repair",
        "guard.mode_log": "log only",
        "guard.confirm_check": "Confirm the check",
        "guard.confirm_load": "Confirm re-sending the table",
        "guard.states_check": "The guardian will compare table {table} (mode:"
        " {mode}) with the central hub. The read spares the IBM i; it can take a"
        " few minutes.",
        "guard.states_load": "The guardian will read the whole table {table} on"
        " the IBM i again and send every row to the central hub, which applies"
        " only what it lacks or holds older. A large table can take a while.",
        "guard.submit_check": "Yes, check",
        "guard.submit_load": "Yes, re-send the table",
        "alarm.guardian_failed": "The guardian's last run on table {detail}"
        " failed. To do: read the error on the Guardian page, then check again.",
        "alarm.guardian_differences": "The guardian found differences in table"
        " {detail} (log-only mode: nothing is repaired). To do: open the Guardian"
        " page, re-send the table or tell support.",
        "account.title": "Change the password",
        "account.intro": "Every other session of this account ends.",
        "account.current": "Current password",
        "account.submit": "Change",
        "account.changed": "Password changed; the other sessions are ended.",
        "account.same": "The new password must differ from the current one.",
        "skip.link": "Skip this entry",
        "skip.title": "Confirm skipping a journal entry",
        "skip.name_sequence": "entry {sequence} of receiver {receiver}",
        "skip.name_null": "the row with no sequence after entry {after} of"
        " receiver {receiver}",
        "skip.states_entry": "The miner will pass over {entry}, which it cannot"
        " use: column {field} = {value}, expected: {expected}.",
        "skip.states_effect": "It reads the journal window again, stores the"
        " other entries and parks this row whole (every column) as a dead letter"
        " of stage miner (Dead letters page): it is not relayed to the central"
        " hub. A guardian check is queued for each table the row touches (every"
        " relayed table when its table is unknown or it is a commitment control"
        " entry); it repairs what the row would have changed. The miner then"
        " reads on and the alarm clears.",
        "skip.states_final": "This cannot be undone: the miner reads on past this"
        " entry without coming back to it, and its dead letter cannot be"
        " retried.",
        "skip.states_check": "The miner checks once more before it skips: if the"
        " alarm changed meanwhile, the row reads whole again or (a row with no"
        " sequence) the window's other rows leave it more than one place, nothing"
        " is skipped. Its answer shows in the audit log.",
        "skip.submit": "Yes, skip this entry",
        "skip.no_alarm": "No unusable journal entry alarm is up: nothing to skip.",
        "skip.gone": "The alarm cleared since you confirmed: nothing was requested.",
        "skip.changed": "The alarm now names another entry ({named}) than the one"
        " you confirmed: nothing was requested. Read the new alarm, then ask"
        " again.",
        "skip.changed_fault": "The entry ({named}) is now unusable for another"
        " reason (column {field}) than the one you confirmed: nothing was"
        " requested. Read the new alarm, then ask again.",
        "skip.cli_only": "This alarm's facts are incomplete: this page cannot"
        " tell which entry to skip. The miner writes them again at its next read;"
        " if they stay incomplete, read the entry with DSPJRN and skip it from"
        " the box's command line: appliance skip-entry --receiver LIB/NAME"
        " --sequence N (or --null-after N for a row with no sequence).",
        "lang.switch": "Français",
        "error.csrf": "Form expired or invalid: reload the page.",
    },
}


def translate(language: str, key: str, **values: object) -> str:
    """The text of ``key`` in ``language`` (French if unknown)."""
    table = MESSAGES.get(language, MESSAGES["fr"])
    text = table.get(key) or MESSAGES["fr"].get(key) or key
    return text.format(**values) if values else text
