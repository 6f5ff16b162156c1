// region: the overseas region of the store, from the first two letters of its id.
var REGIONS = {
  MQ: "MQ", // Martinique
  GP: "GP", // Guadeloupe
  RE: "RE", // La Réunion
  GF: "GF", // Guyane
  MF: "MF"  // Saint-Martin
};

function enrich(change) {
  var prefix = String(change.store).substring(0, 2);
  if (!REGIONS.hasOwnProperty(prefix)) {
    throw new Error("unknown region for store " + change.store);
  }
  return REGIONS[prefix];
}
